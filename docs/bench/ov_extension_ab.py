"""One-process A/B of PAT_ch's exported gate as one OpenVINO extension op (a measurement, not shipped).

Builds ``docs/bench/ov_extension/gate_scale.cpp`` with g++ against the OpenVINO wheel's headers, replaces each
PAT_ch gate of the exported ONNX graph (ReduceMean ... Reshape, ten nodes) with one ``GateScale`` node of that
library, and times three OpenVINO models in alternation, as ``change_ab.py`` does: A = the extension graph,
B = the shipped graph (``make_runner``'s openvino runner), F = FasterNet; batch 1, 20 warm-up + CALLS (400)
timed calls in rotating 5-call rounds. Prints a change-ab.md row (B / A below 1: the shipped graph faster).

    .venv/bin/python docs/bench/ov_extension_ab.py {64|patnet_t0|patnet_t2|...} {fp32|bf16} THREADS [CALLS]
"""
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import timm
import torch
from onnx import helper, numpy_helper

import patnet  # noqa: F401
from patnet.bench.timing import summarise, time_alternating
from patnet.deploy import deploy
from patnet.export import export_onnx
from patnet.layers.stats import bessel_factor
from patnet.models import baseline_partner
from patnet.runtimes import make_runner
from patnet.runtimes.external import openvino_config
from patnet.runtimes.ov_passes import rewritten

SOURCE = Path(__file__).with_name("ov_extension") / "gate_scale.cpp"


def build_library(folder: str) -> str:
    """The extension compiled into ``folder``: its path."""
    root = Path(ov.__file__).parent
    library = f"{folder}/libgate_scale.so"
    subprocess.run(["g++", "-O3", "-ffast-math", "-march=native", "-std=c++17", "-shared", "-fPIC", str(SOURCE),
                    f"-I{root / 'include'}", f"-L{root / 'libs'}", f"-Wl,-rpath,{root / 'libs'}",
                    f"-l:{next((root / 'libs').glob('libopenvino.so.*')).name}",
                    f"-l:{next((root / 'libs').glob('libopenvino_onnx_frontend.so.*')).name}", "-o", library],
                   check=True)
    return library


def module_name(scope: str) -> str:
    """The module path of an exported node's scope: '/stages/stages.1/blocks/blocks.0/x' -> 'stages.1.blocks.0.x'."""
    parts = scope.strip("/").split("/")
    return ".".join(p for p, after in zip(parts, parts[1:] + [""]) if not after.startswith(p + "."))


def with_gate_ops(path: str, model: torch.nn.Module) -> str:
    """The ONNX file at ``path`` with every PAT_ch gate as one GateScale node; the new file's path."""
    graph = onnx.load(path)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    modules = dict(deploy(model).named_modules())
    nodes, initializers = [], []
    for node in graph.graph.node:
        scope, _, kind = node.name.rpartition("/")
        if not scope.endswith("/spatial_mixing/gate"):
            nodes.append(node)
        elif kind == "ReduceMean":
            source = node.input[0]
            weight, bias = modules[module_name(scope)].whole(math.sqrt(bessel_factor(np.prod(shapes[source][2:]))))
            initializers += [numpy_helper.from_array(t.detach().numpy().astype(np.float32), f"{scope}/{n}")
                             for t, n in ((weight, "W"), (bias, "b"))]
        elif kind == "Reshape":
            nodes.append(helper.make_node("GateScale", [source, f"{scope}/W", f"{scope}/b"], list(node.output),
                                          name=f"{scope}/GateScale", domain="patnet"))
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    graph.graph.initializer.extend(initializers)
    graph.opset_import.append(helper.make_opsetid("patnet", 1))
    changed = path.replace(".onnx", "-gate-ops.onnx")
    onnx.save(graph, changed)
    return changed


def main() -> None:
    target, dtype, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if shutil.which("g++") is None:
        sys.exit("ov_extension_ab.py builds its OpenVINO extension with g++, which is not on PATH; install it")
    calls = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    name, size, chans, classes = ("patnet_t0", 64, 1, 10) if target == "64" else (target, 224, 3, 1000)
    torch.set_num_threads(threads)
    model = timm.create_model(name, num_classes=classes, in_chans=chans).eval()
    partner = timm.create_model(baseline_partner(name), num_classes=classes, in_chans=chans).eval()
    x = torch.randn(1, chans, size, size)
    with tempfile.TemporaryDirectory(prefix="patnet-ovext-") as folder:
        core = ov.Core()
        core.add_extension(build_library(folder))
        path = with_gate_ops(str(export_onnx(model, f"{folder}/model.onnx", x).path), model)
        request = core.compile_model(rewritten(core.read_model(path)), "CPU",
                                     openvino_config(dtype, threads)).create_infer_request()
    runners = {"A": lambda v: torch.from_numpy(request.infer({0: v.numpy()}, share_inputs=True)[0].copy()),
               "B": make_runner(model, "openvino", dtype, x, threads),
               "F": make_runner(partner, "openvino", dtype, x, threads)}
    ready = runners["B"].prepare(x)
    difference = (runners["A"](ready) - runners["B"](ready)).abs().max().item()
    calls_ = {k: (lambda r=r: r(ready)) for k, r in runners.items()}
    times = time_alternating(calls_, iters=calls, warmup=20, per_round=5)
    stats, ratio = summarise(times, {"A": "F", "B": "A"})
    _, shipped = summarise(times, {"B": "F"})
    print(f"| gate-op | {name} | {size} | openvino {dtype} | {threads} | {stats['A'].median_ms:.3f} | "
          f"{stats['B'].median_ms:.3f} | {stats['F'].median_ms:.3f} | {ratio['A'].median:.3f} | "
          f"{shipped['B'].median:.3f} | "
          f"{ratio['B'].median:.3f} ({ratio['B'].p10:.3f}-{ratio['B'].p90:.3f}) | {difference:.1e} |")


if __name__ == "__main__":
    main()
