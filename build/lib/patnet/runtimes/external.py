"""The runtimes outside PyTorch, both on the ONNX file ``patnet export`` writes: ONNX Runtime (CPU execution
provider, all graph optimizations) and OpenVINO (CPU plugin, latency hint); and the OpenVINO IR export.

Each package is optional (``pip install "patnet[export]"``); a missing one is a one-line error saying so.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..deploy import deploy
from ..errors import InvalidValueError
from ..fileio import atomic_path
from .ov_passes import read_openvino, rewritten
from .runner import FP32_RTOL, Forward, relative_difference

if TYPE_CHECKING:
    from ..export import ExportReport

INSTALL_HINT = 'pip install "patnet[export]"'


def require(package: str, purpose: str) -> ModuleType:
    """Import ``package``, or raise a one-line error naming ``purpose`` and the install command."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise InvalidValueError(f"{purpose} needs the {package} package, which is not installed here; "
                                f"install it with: {INSTALL_HINT}") from exc


def _numpy_ready(x: Tensor) -> Tensor:
    """A contiguous float32 CPU tensor, whose ``.numpy()`` shares its memory."""
    return x.detach().to("cpu", torch.float32).contiguous()


def _onnx_file(model: nn.Module, example: Tensor, folder: str, purpose: str) -> Path:
    """The deploy form of ``model`` exported (and checked with onnxruntime) into ``folder``."""
    from ..export import export_onnx

    require("onnx", purpose)
    require("onnxruntime", purpose)
    return export_onnx(model, Path(folder) / "model.onnx", _numpy_ready(example)).path


def onnxruntime_options(threads: int | None):
    """Session settings: every graph optimization, ``threads`` intra-op threads (None: all cores), one inter-op
    thread, and the workers' spinning stopped when a run ends. Otherwise an idle session's workers keep spinning
    on the cores another session runs on: on the 2-core Xeon, two threads, patnet_t0 and fasternet_t0 timed in
    alternation took 7.9 and 8.4 ms a call with ORT's default and 4.0 and 4.4 ms so, against 3.6 and 4.0 ms each
    timed alone (where stopping costs 1-2%)."""
    ort = require("onnxruntime", "the onnxruntime runtime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def build_onnxruntime(model, dtype, example, threads, device, form) -> tuple[Forward, Forward]:
    """An ONNX Runtime CPUExecutionProvider session on the exported file, with :func:`onnxruntime_options`."""
    ort = require("onnxruntime", "the onnxruntime runtime")
    with tempfile.TemporaryDirectory(prefix="patnet-ort-") as folder:
        path = _onnx_file(model, example, folder, "the onnxruntime runtime")
        session = ort.InferenceSession(str(path), onnxruntime_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    return forward, _numpy_ready


def openvino_config(dtype: str, threads: int | None) -> dict[str, object]:
    """``compile_model`` settings: latency hint, the precision hint, and ``threads`` (None: OpenVINO's choice)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                 "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def build_openvino(model, dtype, example, threads, device, form) -> tuple[Forward, Forward]:
    """An OpenVINO CPU model compiled from the exported ONNX file (:func:`read_openvino`) with
    :func:`openvino_config`."""
    ov = require("openvino", "the openvino runtime")
    with tempfile.TemporaryDirectory(prefix="patnet-ov-") as folder:
        path = _onnx_file(model, example, folder, "the openvino runtime")
        core = ov.Core()
        compiled = core.compile_model(read_openvino(core, path), "CPU", openvino_config(dtype, threads))
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if dtype == "bf16" and precision != ov.Type.bf16:
        raise InvalidValueError(f"OpenVINO would run this model in {precision.get_type_name()} on this CPU, not bf16; "
                                "use fp32 here")
    request = compiled.create_infer_request()

    def forward(x: Tensor) -> Tensor:
        return torch.from_numpy(request.infer({0: x.numpy()}, share_inputs=True)[0])
    return forward, _numpy_ready


def _save_ir(ov: ModuleType, onnx_path: Path, xml: Path, binary: Path) -> list[str]:
    """Convert ``onnx_path`` (with :func:`~patnet.runtimes.ov_passes.rewritten`) and write the IR to ``xml`` and
    ``binary`` (fp32 weights); its op types."""
    converted = rewritten(ov.convert_model(str(onnx_path)))
    saved_binary = xml.with_suffix(".bin")  # save_model writes the weights beside the .xml
    try:
        ov.save_model(converted, str(xml), compress_to_fp16=False)
        os.replace(saved_binary, binary)
    finally:
        saved_binary.unlink(missing_ok=True)
    return sorted({op.get_type_name() for op in converted.get_ops()})


@torch.no_grad()
def export_openvino(model: nn.Module, path: str | Path, example: Tensor, onnx_path: str | Path | None = None,
                    dynamic_batch: bool = False, rtol: float = FP32_RTOL) -> ExportReport:
    """Write ``model``'s deployment form as OpenVINO IR: ``path`` (``.xml``) and the ``.bin`` beside it.

    Converted from ``onnx_path`` when given (a file ``patnet export`` wrote for this model), else from a
    fresh, checked ONNX export of ``model``; both files appear only once OpenVINO's f32 output on
    ``example`` is within ``rtol`` of eager PyTorch's scale (RuntimeError otherwise).
    """
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise InvalidValueError(f"an OpenVINO IR path must end in .xml (the .bin is written beside it), "
                                f"got {str(path)!r}")
    from ..export import ExportReport, export_onnx

    ov = require("openvino", "the OpenVINO export")
    folded = deploy(model)
    inputs = torch.cat([example, example.flip(0)]) if dynamic_batch else example
    with tempfile.TemporaryDirectory(prefix="patnet-ov-") as folder:
        if onnx_path is None:
            require("onnx", "the OpenVINO export")
            require("onnxruntime", "the OpenVINO export")
            onnx_path = export_onnx(model, Path(folder) / "model.onnx", example, dynamic_batch=dynamic_batch,
                                    rtol=rtol).path
        with atomic_path(path) as xml, atomic_path(path.with_suffix(".bin")) as binary:
            op_types = _save_ir(ov, Path(onnx_path), xml, binary)
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(xml), str(binary)), "CPU",
                                          {"INFERENCE_PRECISION_HINT": "f32"})
            expected = folded(inputs)
            output = torch.from_numpy(compiled(_numpy_ready(inputs).numpy())[0])
            relative = relative_difference(expected, output)
            if relative > rtol:
                raise RuntimeError(f"OpenVINO output differs from PyTorch by {relative:.2e} of its scale "
                                   f"(allowed {rtol:.0e}); the IR was not written")
    return ExportReport(path, "openvino", (expected - output).abs().max().item(), relative, op_types)
