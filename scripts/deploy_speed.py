"""Deployment-form speed of PATNet against timm's FasterNet, and what each optimization contributes.

Protocol (shared/spec/measurement.md): batch 1, 224x224, fp32, inference mode, both models in deploy
form (BNs folded), timed in alternation in one process; the median of per-round time ratios is quoted.
Writes docs/deploy/speed.md and speed.json. Run on an otherwise idle machine:

    .venv/bin/python scripts/deploy_speed.py            # full run
    .venv/bin/python scripts/deploy_speed.py --quick    # a minute or two, fewer iterations
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from unittest import mock

import timm
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import patnet
from patnet.bench import compare, matmul_gflops
from patnet.deploy import deploy
from patnet.export import export_onnx
from patnet.flops import count_macs
from patnet.layers import fused
from patnet.layers.rel_pos import euclidean_bucket_index
from patnet.runtimes import describe_cpu

PAIRS = [("patnet_t0", "fasternet_t0"), ("patnet_t1", "fasternet_t1"), ("patnet_t2", "fasternet_t2"),
         ("patnet_s", "fasternet_s")]


class WithContext(nn.Module):
    """Runs ``model`` inside a fresh context from ``make_context`` on every call (for ablations)."""

    def __init__(self, model: nn.Module, make_context):
        super().__init__()
        self.model = model
        self.make_context = make_context

    def forward(self, x):
        with self.make_context():
            return self.model(x)


class OrtModule(nn.Module):
    """An onnxruntime session behind an nn.Module call, for timing beside PyTorch."""

    def __init__(self, path: str, threads: int):
        super().__init__()
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(self, x):
        return self.session.run(None, {"input": x.numpy()})[0]


def std_mean_stats(x, traceable=False):
    """``stacked_mean_std``'s ``(B, 2C)`` rows ``[mean, std]`` from ``torch.std_mean``."""
    std, mean = torch.std_mean(x, dim=(2, 3))
    return torch.cat((mean, std), dim=1)


def slicing_channel_attn(self, x):
    out = x * self.gate(x)
    out[:, :self.conv_dim] = self.conv(x[:, :self.conv_dim])
    return out


def uncached_bias(self, height, width):
    index = euclidean_bucket_index(height, width, device=self.rel_pos.bias_table.device).flatten()
    length = height * width
    return self.rel_pos.bias_table[:, index].view(1, self.num_heads, length, length)


ABLATIONS = {
    "torch.std_mean for PAT_ch statistics": lambda: mock.patch.object(fused, "stacked_mean_std", std_mean_stats),
    "PConv by slicing (clone + write)": lambda: mock.patch.object(fused.FusedPartialChannelAttn, "forward",
                                                                  slicing_channel_attn),
    "attention on SDPA's math path": lambda: sdpa_kernel(SDPBackend.MATH),
    "relative-position bias recomputed per call": lambda: mock.patch.object(
        fused.FusedPartialSelfAttn, "attention_bias", uncached_bias),
}


def ratio_row(comparison, name, base):
    r = comparison.ratios[name]
    s, b = comparison.stats[name], comparison.stats[base]
    return dict(model=name, baseline=base, model_ms=s.median_ms, baseline_ms=b.median_ms, ratio=r.median,
                ratio_p10=r.p10, ratio_p90=r.p90, model_iqr_ms=s.iqr_ms, baseline_iqr_ms=b.iqr_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="docs/deploy")
    args = parser.parse_args()
    iters, warmup = (40, 5) if args.quick else (200, 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict = dict(
        machine=dict(cpu=describe_cpu(), cores=torch.get_num_threads(),
                     torch=torch.__version__, timm=timm.__version__, patnet=patnet.__version__),
        protocol=dict(batch=1, img=224, dtype="float32", warmup=warmup, iters=iters, form="deploy"),
    )
    deployed = {}
    for name, base in PAIRS:
        deployed[name] = deploy(timm.create_model(name))
        deployed[base] = deploy(timm.create_model(base))

    results["latency"] = []
    for threads in (1, 2):
        for name, base in PAIRS:
            c = compare({name: deployed[name], base: deployed[base]}, baseline=base, threads=threads,
                        iters=iters, warmup=warmup)
            results["latency"].append(dict(threads=threads, **ratio_row(c, name, base)))
            print(results["latency"][-1], flush=True)

    results["throughput_b32"] = []
    for name, base in PAIRS:
        c = compare({name: deployed[name], base: deployed[base]}, baseline=base, threads=2, batch_size=32,
                    iters=max(iters // 10, 4), warmup=2)
        row = ratio_row(c, name, base)
        row.update(model_img_s=c.images_per_s(name), baseline_img_s=c.images_per_s(base))
        results["throughput_b32"].append(row)
        print(row, flush=True)

    t2 = deployed["patnet_t2"]
    macs = count_macs(t2)
    ceiling = matmul_gflops(threads=1, size=2048, iters=10)
    t2_ms = compare({"patnet_t2": t2}, threads=1, iters=iters, warmup=warmup).stats["patnet_t2"].median_ms
    fn_ms = compare({"fasternet_t2": deployed["fasternet_t2"]}, threads=1, iters=iters,
                    warmup=warmup).stats["fasternet_t2"].median_ms
    results["efficiency"] = dict(
        patnet_t2_gflops=2 * macs / (t2_ms / 1e3) / 1e9, fasternet_t2_gflops=2 * count_macs(deployed["fasternet_t2"])
        / (fn_ms / 1e3) / 1e9, matmul_gflops_1thread=ceiling, patnet_t2_ms=t2_ms, fasternet_t2_ms=fn_ms)
    print(results["efficiency"], flush=True)

    # Ablation on patnet_t2, one thread: each variant against the default deploy form, in alternation.
    train_form = timm.create_model("patnet_t2").eval()
    variants = {"default deploy form": t2, "training form (no folding)": train_form,
                "NCHW (contiguous weights)": copy.deepcopy(t2).to(memory_format=torch.contiguous_format)}
    variants.update({label: WithContext(t2, make) for label, make in ABLATIONS.items()})
    c = compare(variants, baseline="default deploy form", threads=1, iters=iters, warmup=warmup)
    results["ablation"] = [dict(variant=k, ms=c.stats[k].median_ms,
                                ratio_to_default=c.ratios[k].median if k in c.ratios else 1.0)
                           for k in variants]
    print(results["ablation"], flush=True)

    # torch.compile on CPU (inductor): compile time and speed against eager.
    try:
        compiled = torch.compile(t2)
        begin = time.time()
        with torch.inference_mode():
            compiled(torch.randn(1, 3, 224, 224))
        compile_s = time.time() - begin
        c = compare({"eager": t2, "compiled": compiled}, baseline="eager", threads=1, iters=iters, warmup=warmup)
        results["compile"] = dict(compile_s=compile_s, eager_ms=c.stats["eager"].median_ms,
                                  compiled_ms=c.stats["compiled"].median_ms, ratio=c.ratios["compiled"].median)
    except Exception as exc:  # inductor needs a working C++ toolchain
        results["compile"] = dict(error=" ".join(str(exc).split())[:200])
    print(results["compile"], flush=True)

    # ONNX Runtime against PyTorch, patnet_t2 deploy form, 1 thread.
    example = torch.randn(1, 3, 224, 224)
    report = export_onnx(timm.create_model("patnet_t2").eval(), out / "patnet_t2.onnx", example)
    ort_module = OrtModule(str(report.path), threads=1)
    c = compare({"pytorch": t2, "onnxruntime": ort_module}, baseline="pytorch", threads=1, iters=iters, warmup=warmup)
    results["onnx"] = dict(relative_diff=report.relative_diff, max_abs_diff=report.max_abs_diff,
                           pytorch_ms=c.stats["pytorch"].median_ms, onnxruntime_ms=c.stats["onnxruntime"].median_ms,
                           ratio=c.ratios["onnxruntime"].median)
    report.path.unlink()
    print(results["onnx"], flush=True)

    results["wall_s"] = time.time() - started
    (out / "speed.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "speed.md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(r: dict) -> str:
    lines = ["# PATNet deploy-form speed against timm's FasterNet", "",
             f"Machine: {r['machine']}. Protocol: {r['protocol']}; models timed in alternation in one process, "
             "ratio = median of per-round ratios (p10-p90 in brackets). Produced by "
             "`.venv/bin/python scripts/deploy_speed.py`"
             f" in {r.get('wall_s', 0) / 60:.1f} min.", "",
             "## CPU latency, batch 1", "", "| threads | model | ms | FasterNet ms | ratio |", "|---|---|---|---|---|"]
    for row in r["latency"]:
        lines.append(f"| {row['threads']} | {row['model']} | {row['model_ms']:.2f} | {row['baseline_ms']:.2f} | "
                     f"{row['ratio']:.3f} ({row['ratio_p10']:.3f}-{row['ratio_p90']:.3f}) |")
    lines += ["", "## CPU throughput, batch 32, 2 threads", "", "| model | img/s | FasterNet img/s | time ratio |",
              "|---|---|---|---|"]
    for row in r["throughput_b32"]:
        lines.append(f"| {row['model']} | {row['model_img_s']:.1f} | {row['baseline_img_s']:.1f} "
                     f"| {row['ratio']:.3f} |")
    e = r["efficiency"]
    lines += ["", "## Efficiency, one thread", "",
              f"patnet_t2: {e['patnet_t2_gflops']:.1f} GFLOP/s ({e['patnet_t2_ms']:.2f} ms); fasternet_t2: "
              f"{e['fasternet_t2_gflops']:.1f} GFLOP/s ({e['fasternet_t2_ms']:.2f} ms); 2048x2048 fp32 matmul: "
              f"{e['matmul_gflops_1thread']:.1f} GFLOP/s (patnet_t2 at "
              f"{100 * e['patnet_t2_gflops'] / e['matmul_gflops_1thread']:.0f}% of it).", "",
              "## Ablation (patnet_t2, one thread): each variant undoes one choice of the default deploy form", "",
              "| variant | ms | time ratio to the default |", "|---|---|---|"]
    for row in r["ablation"]:
        lines.append(f"| {row['variant']} | {row['ms']:.2f} | {row['ratio_to_default']:.3f} |")
    comp = r["compile"]
    lines += ["", "## torch.compile (inductor, CPU), patnet_t2 deploy form, one thread", ""]
    lines.append(f"compile {comp['compile_s']:.0f} s; eager {comp['eager_ms']:.2f} ms, "
                 f"compiled {comp['compiled_ms']:.2f} ms, ratio {comp['ratio']:.3f}"
                 if "error" not in comp else f"failed: {comp['error']}")
    o = r["onnx"]
    lines += ["", "## ONNX (opset 18) through onnxruntime, patnet_t2, one thread", "",
              f"parity: max |diff| {o['max_abs_diff']:.2e} ({o['relative_diff']:.2e} of the output scale); "
              f"PyTorch {o['pytorch_ms']:.2f} ms, onnxruntime {o['onnxruntime_ms']:.2f} ms, ratio {o['ratio']:.3f}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
