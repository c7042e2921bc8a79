"""Where the time goes: per-block GEMM and non-GEMM time of PATNet against FasterNet in every runtime.

Each model is profiled in its deploy form, batch 1, on one thread (``--threads N``: N), in fp32 in eager PyTorch
and ONNX Runtime, and in OpenVINO in f32 and (where the CPU has native bf16) bf16:

- eager PyTorch under ``torch.profiler``: every top-level part and every block runs inside a named range, and
  each operator's *self* time is charged to the innermost range around it;
- ONNX Runtime with its own profiler on the exported graph: each kernel's time is charged to the block its node
  name comes from (FasterNet's export keeps no module paths in its node names, so only its totals compare);
- OpenVINO with its performance counters on the same exported graph, charged the same way (its fused
  "Subgraph" kernels count as non-GEMM even where they hold a small matrix product, e.g. attention's), with
  the nodes each model ran per call and its wall time per call beside the counters' sum;
- ``torch.compile`` in fp32 and (where native) bf16, compiled as the regime matrix compiles (``make_runner``) but
  with the Python wrapper and inductor's kernel profiling on, so each generated kernel is a profiler event:
  inductor's kernels carry no module path, so each model's time is one part, split into GEMM work (oneDNN
  convs and linears, the C++ GEMM template's kernels) and the rest (its fused element-wise and reduction
  kernels, attention, the wrapper's own time), with the kernels by name.

Operators are split into GEMM work (convolutions, matrix products, linear layers) and everything else
(statistics, gates, activations, concatenations, copies, softmax, ...), and each runtime also gets the model's
costliest operator types beside the baseline's time in the same types (OpenVINO's with the implementation it
picked, e.g. ``Reorder (jit_uni_f32)``). Profilers add overhead to small
operators, so the totals run above a plain timing; the split, not the absolute milliseconds, is the point.

With ``--device cuda`` it profiles PATNet-T2 against FasterNet-T2 on the GPU instead, eager only, at ``--batch``
(default 256), in fp32 and bf16 (weights and input), channels-last: each ATen operator is charged the GPU time of
the kernels it launched itself (torch.profiler's self device time).

    .venv/bin/python scripts/profile_blocks.py            # writes docs/bench/profile.md and profile.json
    .venv/bin/python scripts/profile_blocks.py --quick    # a smoke test
    .venv/bin/python scripts/profile_blocks.py --threads 2 --out docs/bench/epyc-zen5   # profile-2threads.md
    python scripts/profile_blocks.py --device cuda        # writes docs/bench/profile-gpu.md and .json
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import timm
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import patnet  # noqa: F401  (registers the models)
from patnet.bench.report import machine_info
from patnet.deploy import deploy, fold_sequential_conv_bn
from patnet.export import export_onnx
from patnet.fileio import write_text_atomic
from patnet.runtimes import FP32_RTOL, describe_cpu, make_runner, native_bf16, onnxruntime_options, relative_difference
from patnet.runtimes import runner as runners
from patnet.runtimes.external import openvino_config
from patnet.runtimes.ov_passes import read_openvino

CASES = [("patnet_t2", "fasternet_t2", (3, 224, 224), 1000), ("patnet_t0", "fasternet_t0", (3, 224, 224), 1000),
         ("patnet_t0", "fasternet_t0", (1, 64, 64), 10)]
GEMM = re.compile(r"conv|addmm|\bmm\b|bmm|matmul|linear|gemm|fullyconnected", re.IGNORECASE)
BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)")
STAGE_PART = re.compile(r"stages\.(\d+)\.(downsample)")
ONNX_BLOCK = re.compile(r"stages\.(\d+)/blocks/blocks\.(\d+)/")  # exported names: /stages/stages.2/blocks/blocks.1/...
ONNX_STAGE_PART = re.compile(r"stages\.(\d+)/(downsample)/")
KERNEL_NAME = re.compile(r"^graph_\d+_|_\d+$")  # inductor's graph prefix and kernel counter
TOP_OPERATORS = 12


def block_kind(block: nn.Module) -> str:
    """A short name for a block's mixer (``pconv``, ``pat_ch``, ``pat_sf``), ``+sp`` with a spatial gate."""
    mixer = type(getattr(block, "spatial_mixing", None)).__name__
    kind = {"PartialConv": "pconv", "FusedPartialChannelAttn": "pat_ch", "FusedPartialSelfAttn": "pat_sf"}
    name = kind.get(mixer, "pconv" if "Partial" in mixer else mixer)
    gate = getattr(getattr(block, "mlp", None), "spatial_gate", None)
    return name + ("+sp" if gate is not None and not isinstance(gate, nn.Identity) else "")


def part_labels(model: nn.Module) -> dict[str, str]:
    """Module path -> the group its time is charged to (``stage 1 pat_ch``, ``stage 2 downsample``, ``stem``...)."""
    labels = {}
    for path, module in model.named_modules():
        block, stage = BLOCK.fullmatch(path), STAGE_PART.fullmatch(path)
        if block:
            labels[path] = f"stage {block.group(1)} {block_kind(module)}"
        elif stage:
            labels[path] = f"stage {stage.group(1)} downsample"
        elif path == "patch_embed":
            labels[path] = "stem"
        elif path in ("conv_head", "classifier"):
            labels[path] = "head"
    return labels


class Charges:
    """Milliseconds per call charged two ways: to a part (stem, a block, the head), split into GEMM work and the
    rest, and to an operator type (ATen op, ONNX Runtime kernel, OpenVINO node type and implementation)."""

    def __init__(self, calls: int):
        self.calls = calls
        self.parts: dict[str, dict[str, float]] = defaultdict(lambda: {"gemm": 0.0, "other": 0.0})
        self.operators: dict[str, float] = defaultdict(float)
        self.dispatch: dict[str, float] = {}  # OpenVINO: nodes run per call, wall and counted ms per call

    def add(self, part: str, operator: str, kind_name: str, ms_total: float) -> None:
        """Charge ``ms_total`` (over all calls) of ``operator`` to ``part``; ``kind_name`` decides GEMM or not."""
        self.parts[part]["gemm" if GEMM.search(kind_name) else "other"] += ms_total / self.calls
        self.operators[operator] += ms_total / self.calls


def eager_profile(model: nn.Module, x: torch.Tensor, calls: int) -> Charges:
    """Charges per call from torch.profiler's self times: CPU time, or on a GPU the kernels' device time."""
    labels = part_labels(model)
    modules = dict(model.named_modules())
    ranges = {}
    handles = []
    for path, label in labels.items():
        def enter(_module, _args, path=path):
            ranges[path] = torch.profiler.record_function(f"part|{labels[path]}")
            ranges[path].__enter__()

        def leave(_module, _args, _out, path=path):
            ranges.pop(path).__exit__(None, None, None)
        handles += [modules[path].register_forward_pre_hook(enter), modules[path].register_forward_hook(leave)]
    activities = [torch.profiler.ProfilerActivity.CPU] + [torch.profiler.ProfilerActivity.CUDA] * x.is_cuda
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                model(x)
            if x.is_cuda:
                torch.cuda.synchronize()
    for handle in handles:
        handle.remove()
    return charge_events(prof.events(), calls, device_time=x.is_cuda)


def group_of(event) -> str:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("part|"):
            return parent.name[len("part|"):]
        parent = parent.cpu_parent
    return "outside the parts (pooling, flatten)"


def charge_events(events, calls: int, device_time: bool = False) -> Charges:
    """Each CPU-side operator's self time charged to its part; with ``device_time``, the GPU time of the kernels
    it launched itself instead (kernel events are not charged again on their own)."""
    charges = Charges(calls)
    for event in events:
        if event.name.startswith("part|") or event.name.startswith("ProfilerStep"):
            continue
        if device_time and event.device_type != torch.autograd.DeviceType.CPU:
            continue
        us = event.self_device_time_total if device_time else event.self_cpu_time_total
        if us > 0:
            charges.add(group_of(event), event.name, event.name, us / 1e3)
    return charges


def ort_profile(model: nn.Module, x: torch.Tensor, calls: int, threads: int) -> Charges:
    """The same split from ONNX Runtime's profiler on the exported deploy form, in the runner's session settings
    (:func:`~patnet.runtimes.onnxruntime_options`)."""
    import onnxruntime as ort

    labels = part_labels(model)
    with tempfile.TemporaryDirectory(prefix="patnet-profile-") as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", x).path
        options = onnxruntime_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    charges = Charges(calls)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "")
        charges.add(onnx_group(event["name"], labels), op, op, event["dur"] / 1e3)
    return charges


def openvino_profile(model: nn.Module, x: torch.Tensor, calls: int, precision: str, threads: int) -> Charges:
    """The same split from OpenVINO's performance counters on the exported deploy form."""
    import openvino as ov

    labels = part_labels(model)
    with tempfile.TemporaryDirectory(prefix="patnet-profile-") as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", x).path
        config, core = {**openvino_config(precision, threads), "PERF_COUNT": True}, ov.Core()
        request = core.compile_model(read_openvino(core, path), "CPU", config).create_infer_request()
    charges, walls, counted = Charges(calls), [], []
    for _ in range(3):
        request.infer({0: x.numpy()})
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: x.numpy()})
        walls.append(time.perf_counter() - start)
        nodes = request.profiling_info
        for node in nodes:
            charges.add(onnx_group(node.node_name, labels), f"{node.node_type} ({node.exec_type})", node.node_type,
                        node.real_time.total_seconds() * 1e3)
        counted.append(sum(node.real_time.total_seconds() for node in nodes))
    executed = sum(node.status.name == "EXECUTED" for node in nodes)  # the last call's
    charges.dispatch = {"nodes": executed, "wall_ms": statistics.median(walls) * 1e3,
                        "counted_ms": statistics.median(counted) * 1e3}
    return charges


SHIPPED_COMPILE_SETTINGS = runners._compile_settings


@contextlib.contextmanager
def _profiled_compile_settings(dtype: str, device: torch.device):
    """``make_runner``'s compile settings, with the Python wrapper and inductor's per-kernel profiler ranges."""
    import torch._inductor.config as inductor_config

    with SHIPPED_COMPILE_SETTINGS(dtype, device), inductor_config.patch(
            {"cpp_wrapper": False, "cpp.enable_kernel_profile": True}):
        yield


def compile_profile(name: str, x: torch.Tensor, classes: int, calls: int, precision: str, threads: int) -> Charges:
    """The split from torch.profiler's self times on ``name`` compiled as the regime matrix compiles it."""
    model = timm.create_model(name, num_classes=classes, in_chans=x.shape[1]).eval()
    with mock.patch.object(runners, "_compile_settings", _profiled_compile_settings):
        run = make_runner(model, "compile", precision, x, threads=threads)
        ready = run.prepare(x)
        for _ in range(3):
            run(ready)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                run(ready)
    charges = Charges(calls)
    for event in prof.events():
        if event.self_cpu_time_total > 0:
            kernel = KERNEL_NAME.sub("", event.name)[:72]
            kind_name = "" if kernel.startswith(("cpp_fused", "## Call")) else kernel
            charges.add("compiled graph (kernels carry no module path)", kernel, kind_name,
                        event.self_cpu_time_total / 1e3)
    return charges


def onnx_group(node: str, labels: dict[str, str]) -> str:
    """The group of an ONNX node from the module path its exported name carries."""
    for pattern in (ONNX_BLOCK, ONNX_STAGE_PART):
        match = pattern.search(node)
        if match:
            key = f"stages.{match.group(1)}." + ("blocks." + match.group(2) if pattern is ONNX_BLOCK else "downsample")
            return labels.get(key, key)
    for prefix, label in (("patch_embed", "stem"), ("conv_head", "head"), ("classifier", "head")):
        if prefix in node:
            return label
    return "not attributed (no module path in the node name)"


def summarise_charges(charges: Charges) -> dict:
    """``parts``: sorted by stage, then part, every group with its total; ``operators``: ms per operator type,
    largest first."""
    rows = {}
    for group in sorted(charges.parts):
        gemm, other = charges.parts[group]["gemm"], charges.parts[group]["other"]
        rows[group] = {"gemm_ms": gemm, "other_ms": other, "total_ms": gemm + other}
    operators = dict(sorted(charges.operators.items(), key=lambda item: -item[1]))
    return {"parts": rows, "operators": operators, **({"dispatch": charges.dispatch} if charges.dispatch else {})}


def fold_in_tree(model: nn.Module) -> nn.Module:
    """FasterNet folded with its module tree kept (``deploy`` folds it through torch.fx, whose graph inlines the
    blocks, so no block would show in the profile): ``deploy``'s fold of (conv, BN) pairs in Sequentials, plus
    the stem's and the downsamplings' ``norm(conv(x))``. Same numbers (checked), same ops."""
    model = copy.deepcopy(model).eval()
    fold_sequential_conv_bn(model)
    for module in model.modules():
        for conv_name in ("proj", "reduction"):
            conv, bn = getattr(module, conv_name, None), getattr(module, "norm", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                module.norm = nn.Identity()
    return model.to(memory_format=torch.channels_last)


def deploy_form(name: str, x: torch.Tensor, classes: int) -> nn.Module:
    """The folded model, checked against its training form on ``x``."""
    model = timm.create_model(name, num_classes=classes, in_chans=x.shape[1]).eval()
    folded = deploy(model) if name.startswith("patnet") else fold_in_tree(model)
    with torch.inference_mode():
        reference, output = model(x), folded(x)
    if relative_difference(reference, output) > FP32_RTOL:
        raise SystemExit(f"{name}: the folded form differs from the training form")
    return folded


def profile_gpu_case(name: str, x: torch.Tensor, classes: int, calls: int, batch: int) -> dict:
    """Eager GPU profiles of ``name``'s deploy form at ``batch``, fp32 and bf16, channels-last."""
    model = deploy_form(name, x, classes)
    profiles = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        on_gpu = model.to("cuda", dtype, memory_format=torch.channels_last)
        batch_x = x.expand(batch, -1, -1, -1).to("cuda", dtype, memory_format=torch.channels_last)
        profiles[f"eager cuda {precision}, batch {batch}"] = summarise_charges(eager_profile(on_gpu, batch_x, calls))
    return profiles


def profile_case(name: str, x: torch.Tensor, classes: int, calls: int, threads: int) -> dict:
    model = deploy_form(name, x, classes)
    profiles = {"eager fp32": summarise_charges(eager_profile(model, x, calls)),
                "onnxruntime fp32": summarise_charges(ort_profile(model, x, calls, threads))}
    precisions = ("fp32", "bf16") if native_bf16("cpu") else ("fp32",)
    for precision in precisions:
        profiles[f"openvino {precision}"] = summarise_charges(openvino_profile(model, x, calls, precision, threads))
    for precision in precisions:
        profiles[f"compile {precision}"] = summarise_charges(
            compile_profile(name, x, classes, calls, precision, threads))
    return profiles


def case_lines(case: dict) -> list[str]:
    lines = [f"## {case['model']} against {case['baseline']}, {'x'.join(map(str, case['input']))}", ""]
    for runtime in case["profiles"][case["model"]]:
        lines += [f"### {runtime}", "", "| part | model GEMM ms | model other ms | baseline part | baseline GEMM ms | "
                  "baseline other ms |", "|---|---|---|---|---|---|"]
        ours, theirs = case["profiles"][case["model"]][runtime], case["profiles"][case["baseline"]][runtime]
        for left, right in zip_longest_rows(ours["parts"], theirs["parts"]):
            lines.append(f"| {left[0]} | {left[1]} | {left[2]} | {right[0]} | {right[1]} | {right[2]} |")
        totals = summary_line(case["model"], ours["parts"]) + "; " + summary_line(case["baseline"], theirs["parts"])
        lines += ["", totals, ""] + dispatch_lines(case, ours, theirs)
        lines += operator_lines(ours["operators"], theirs["operators"])
    return lines


def dispatch_lines(case: dict, ours: dict, theirs: dict) -> list[str]:
    """OpenVINO: the nodes each model ran per call, and its median wall time per call (the Python call included)
    beside the median per-call sum of its nodes' counters (which can exceed the wall time: read a wall time well
    above the sum as time between nodes, a small difference as nothing)."""
    if "dispatch" not in ours:
        return []
    said = [f"{name} ran {d['nodes']} nodes a call: {d['wall_ms']:.2f} ms wall, its counters' sum "
            f"{d['counted_ms']:.2f} ms"
            for name, d in ((case["model"], ours["dispatch"]), (case["baseline"], theirs["dispatch"]))]
    return ["; ".join(said), ""]


def operator_lines(ours: dict[str, float], theirs: dict[str, float], rows: int = TOP_OPERATORS) -> list[str]:
    """The model's costliest operator types beside the baseline's time in the same types."""
    lines = [f"By operator type (the model's {rows} costliest; ms per call):", "", "| operator | model ms | "
             "baseline ms |", "|---|---|---|"]
    for operator, ms in list(ours.items())[:rows]:
        lines.append(f"| {operator} | {ms:.3f} | {theirs.get(operator, 0.0):.3f} |")
    return lines + [""]


def zip_longest_rows(ours: dict, theirs: dict):
    left = [(g, f"{r['gemm_ms']:.2f}", f"{r['other_ms']:.2f}") for g, r in ours.items()]
    right = [(g, f"{r['gemm_ms']:.2f}", f"{r['other_ms']:.2f}") for g, r in theirs.items()]
    blank = ("", "", "")
    for i in range(max(len(left), len(right))):
        yield (left[i] if i < len(left) else blank), (right[i] if i < len(right) else blank)


def summary_line(name: str, rows: dict) -> str:
    gemm = sum(r["gemm_ms"] for r in rows.values())
    other = sum(r["other_ms"] for r in rows.values())
    return f"{name}: GEMM {gemm:.2f} ms, other {other:.2f} ms ({100 * other / max(gemm + other, 1e-9):.0f}% non-GEMM)"


def header_lines(calls: int, gpu: bool, batch: int, threads: int) -> list[str]:
    if gpu:
        return [f"# Per-block profile on the GPU: GEMM and non-GEMM kernel time, deploy form, batch {batch}", "",
                f"- Command: `python scripts/profile_blocks.py --device cuda --batch {batch}`",
                f"- Machine: {torch.cuda.get_device_name()}; torch {torch.__version__}; host CPU {describe_cpu()}",
                f"- {calls} profiled calls per model and precision after 3 warm-up calls; GPU milliseconds per call, "
                "each ATen operator charged the kernels it launched itself. Eager PyTorch, channels-last, fp32 "
                "(TF32 as PyTorch's defaults leave it: on for convolutions, off for matrix products) and bf16 weights "
                "and input.", ""]
    option, thread_words = (f" --threads {threads}", f"{threads} threads") if threads > 1 else ("", "one thread")
    return [f"# Per-block profile: GEMM and non-GEMM time, deploy form, batch 1, {thread_words}", "",
            f"- Command: `.venv/bin/python scripts/profile_blocks.py{option}`", f"- Machine: {describe_cpu()}",
            f"- {calls} profiled calls per model and runtime after 3 warm-up calls; milliseconds per call. "
            "Profilers add overhead to small operators: read the split, not the absolute times.",
            "- Each model is profiled once, not in alternation: on a shared machine whole-model times drift between "
            "runs (OpenVINO's GEMM totals differed by up to 2x between two runs on the 2-core Xeon here, its "
            "non-GEMM totals by under 25%); ratios belong to `bench_regimes.py`.",
            "- `compile` sections run inductor's Python wrapper so that its kernels show (the regime matrix runs "
            "the C++ wrapper): the wrapper's own time (`## Call CompiledFxGraph`) and dynamo's guard check count as "
            "non-GEMM there, for both models; read the kernels.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 profiled calls, no files written")
    parser.add_argument("--calls", type=int, default=20, help="profiled calls per model and runtime")
    parser.add_argument("--out", default="docs/bench", help="folder for profile.md and profile.json")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=256, help="batch size on the GPU")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (files: profile-<N>threads.md if > 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calls, gpu = 3 if args.quick else args.calls, args.device == "cuda"
    cases = []
    for model, baseline, shape, classes in CASES[:1] if gpu else CASES:
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        profiles = {name: profile_gpu_case(name, x, classes, calls, args.batch) if gpu
                    else profile_case(name, x, classes, calls, args.threads) for name in (model, baseline)}
        cases.append({"model": model, "baseline": baseline, "input": shape, "profiles": profiles})
        print("\n".join(case_lines(cases[-1])), flush=True)
    if args.quick:
        return
    stem = "profile-gpu" if gpu else "profile" if args.threads == 1 else f"profile-{args.threads}threads"
    out, lines = Path(args.out), header_lines(calls, gpu, args.batch, args.threads)
    lines += [line for c in cases for line in case_lines(c)]
    write_text_atomic(out / f"{stem}.md", "\n".join(lines))
    write_text_atomic(out / f"{stem}.json", json.dumps({"machine": machine_info(), "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
