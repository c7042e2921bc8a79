"""What PATNet's small operations cost in OpenVINO: alternative forms as small graphs, and one block's nodes.

``gate C H``: a 1x1 conv on a 1xCxHxH map, then PAT_ch's gate over all its channels in several exported forms
(the statistics as two ReduceMean as shipped, in one pass, as one ReduceMean over a concatenation, on the flattened
map, as GlobalAveragePool); ``layernorm C H``: the conv, then PAT_sf's per-pixel LayerNorm in three forms. Each
form is compiled on one and two threads, bf16 and f32 (PERFORMANCE_HINT LATENCY, as the regime matrix), timed in
alternation (40 rounds of 10 calls); printed: the conv alone and each form's extra microseconds (medians).
``KEY=VALUE`` arguments add OpenVINO config entries to every compile (e.g. ``TBB_PARTITIONER=AUTO``).

``nodes MODEL PX DTYPE THREADS TEXT``: OpenVINO's performance counters of MODEL's exported deploy form as the
openvino runtime compiles it (``read_openvino``: HardSigmoid gates as Clamps), microseconds
per call over 100 calls, for the nodes whose name contains TEXT (e.g. ``stages.2/blocks/blocks.3/``).

    .venv/bin/python docs/bench/ov_small_graphs.py gate 160 14
    .venv/bin/python docs/bench/ov_small_graphs.py layernorm 192 7 TBB_PARTITIONER=AUTO
    .venv/bin/python docs/bench/ov_small_graphs.py nodes patnet_t0 224 bf16 2 stages.2/blocks/blocks.3/
"""
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import openvino as ov
import timm
import torch
import torch.nn.functional as F

import patnet  # noqa: F401
from patnet.export import export_onnx
from patnet.layers.stats import _unbiased_std as _std
from patnet.layers.stats import mean_biased_std
from patnet.runtimes.external import openvino_config
from patnet.runtimes.ov_passes import read_openvino


def gate_forms(count):
    """``x -> [mean, std]`` rows, ``(B, 2C)``, in each exported form measured (``shipped``: the deploy form's)."""
    def shipped(x):
        return mean_biased_std(x)

    def one_pass(x):
        mean, square = x.mean((2, 3), keepdim=True), x.square().mean((2, 3), keepdim=True)
        return torch.cat((mean, _std((square - mean * mean).clamp_min(0), count)), 1).flatten(1)

    def concat_reduce(x):
        mean, square = torch.cat((x, x.square()), 1).mean((2, 3)).chunk(2, 1)
        return torch.cat((mean, _std((square - mean * mean).clamp_min(0), count)), 1)

    def flattened(x):
        rows = x.flatten(2)
        mean = rows.mean(2, keepdim=True)
        return torch.cat((mean[:, :, 0], _std((rows - mean).square().mean(2), count)), 1)

    def pooled(x):
        mean = F.adaptive_avg_pool2d(x, 1)
        return torch.cat((mean, _std(F.adaptive_avg_pool2d((x - mean).square(), 1), count)), 1).flatten(1)
    return {"shipped": shipped, "one-pass": one_pass, "concat-reduce": concat_reduce, "flattened": flattened,
            "pooled": pooled}


def layernorm_forms(channels):
    """Per-pixel LayerNorm over the channels of a ``(B, C, H, W)`` map, without affine, eps 1e-6."""
    def shipped(x):
        centred = x - x.mean(1, keepdim=True)
        return centred * torch.rsqrt(centred.square().mean(1, keepdim=True) + 1e-6)

    def divided(x):
        centred = x - x.mean(1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(1, keepdim=True) + 1e-6)

    def permuted(x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (channels,), eps=1e-6).permute(0, 3, 1, 2)
    return {"shipped": shipped, "divided": divided, "permuted": permuted}


class ConvThen(torch.nn.Module):
    """A 1x1 conv (the map comes out of a conv, in the runtime's layout), then ``form`` (a gate when ``gated``)."""

    def __init__(self, channels, form=None, gated=False):
        super().__init__()
        self.conv, self.form, self.gated = torch.nn.Conv2d(channels, channels, 1), form, gated
        self.fc = torch.nn.Linear(2 * channels, channels)

    def forward(self, x):
        y = self.conv(x)
        if self.form is None:
            return y
        if not self.gated:
            return self.form(y)
        return y * F.hardsigmoid(self.fc(self.form(y)))[:, :, None, None]


def compare_forms(kind, channels, size, extra):
    forms = gate_forms(size * size) if kind == "gate" else layernorm_forms(channels)
    x = torch.randn(1, channels, size, size)
    requests = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, form in {"conv alone": None, **forms}.items():
            path = f"{folder}/{len(requests)}.onnx"
            torch.onnx.export(ConvThen(channels, form, kind == "gate").eval(), (x,), path, dynamo=False)
            for threads in (1, 2):
                for dtype in ("bf16", "fp32"):
                    config = {**openvino_config(dtype, threads), **extra}
                    core = ov.Core()
                    requests[name, threads, dtype] = core.compile_model(read_openvino(core, path), "CPU",
                                                                        config).create_infer_request()
    feed, times = {0: x.numpy()}, defaultdict(list)
    for _ in range(40):
        for key, request in requests.items():
            start = time.perf_counter()
            for _ in range(10):
                request.infer(feed)
            times[key].append((time.perf_counter() - start) / 10 * 1e6)
    for threads in (1, 2):
        for dtype in ("bf16", "fp32"):
            base = statistics.median(times["conv alone", threads, dtype])
            extras = " ".join(f"{name} +{statistics.median(times[name, threads, dtype]) - base:.1f}" for name in forms)
            print(f"{kind} {channels}x{size}x{size}, {dtype}, {threads} thread(s): conv alone {base:.1f} us; {extras}")


def node_times(name, size, dtype, threads, text, calls=100):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, f"{folder}/model.onnx", x).path
        config, core = {**openvino_config(dtype, threads), "PERF_COUNT": True}, ov.Core()
        request = core.compile_model(read_openvino(core, path), "CPU", config).create_infer_request()
    for _ in range(50):
        request.infer({0: x.numpy()})
    spent = defaultdict(float)
    for _ in range(calls):
        request.infer({0: x.numpy()})
        for node in request.profiling_info:
            if text in node.node_name and node.status.name == "EXECUTED":
                spent[node.node_type, node.exec_type, node.node_name] += node.real_time.total_seconds() * 1e6 / calls
    for (node_type, exec_type, node_name), us in spent.items():
        print(f"{us:7.1f} us  {node_type} ({exec_type})  {node_name}")


def main():
    if sys.argv[1] == "nodes":
        node_times(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
        return
    extra = dict(entry.split("=", 1) for entry in sys.argv[4:])
    compare_forms(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), extra)


if __name__ == "__main__":
    main()
