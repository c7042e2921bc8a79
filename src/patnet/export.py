"""Export of the deployment form to ONNX and TorchScript, verified against PyTorch.

ONNX: the TorchScript-based exporter (``dynamo=False``) with opset 18, weights embedded, constant
folding on, so the relative-position bias becomes a constant; onnxruntime then runs the file and the
export fails if its output differs from PyTorch's by more than ``rtol`` of the output's scale.
TorchScript: ``torch.jit.script`` of the deployment form, checked the same way.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .deploy import deploy
from .models import create_model

OPSET = 18
FORBIDDEN_ONNX_OPS = ("ScatterND",)


@dataclass
class ExportReport:
    path: Path
    fmt: str
    max_abs_diff: float
    relative_diff: float
    op_types: Sequence[str] = ()


def _relative(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    diff = (reference - other).abs().max().item()
    return diff, diff / max(reference.abs().max().item(), 1e-12)


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, dynamic_batch: bool = False,
                rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as ONNX and verify it with onnxruntime."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    folded = deploy(model)
    tmp = _atomic_target(path)
    try:
        with warnings.catch_warnings():  # the tracer notes that input-size checks become constants: intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                folded, (example,), str(tmp), dynamo=False, opset_version=OPSET, export_params=True,
                do_constant_folding=True, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
            )
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        op_types = sorted({node.op_type for node in graph.graph.node})
        bad = [op for op in FORBIDDEN_ONNX_OPS if op in op_types]
        if bad:
            raise RuntimeError(f"the exported graph contains {', '.join(bad)}")
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        inputs = torch.cat([example, example.flip(0)]) if dynamic_batch else example
        expected = folded(inputs)
        output = torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])
        max_abs, relative = _relative(expected, output)
        if relative > rtol:
            raise RuntimeError(f"onnxruntime output differs from PyTorch by {relative:.2e} of its scale "
                               f"(allowed {rtol:.0e})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, "onnx", max_abs, relative, op_types)


@torch.no_grad()
def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor, rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as a scripted TorchScript module and verify it."""
    path = Path(path)
    folded = deploy(model)
    scripted = torch.jit.script(folded)
    tmp = _atomic_target(path)
    try:
        torch.jit.save(scripted, str(tmp))
        loaded = torch.jit.load(str(tmp))
        max_abs, relative = _relative(folded(example), loaded(example))
        if relative > rtol:
            raise RuntimeError(f"TorchScript output differs from PyTorch by {relative:.2e} of its scale")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, "torchscript", max_abs, relative)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="timm model name, e.g. patnet_t2")
    parser.add_argument("--output", required=True, help="FILE.onnx, or FILE.pt/.ts for TorchScript")
    parser.add_argument("--checkpoint", default=None, help="weights to load (state dict or safetensors)")
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    parser.add_argument("--in-chans", type=int, default=None, help="input channels (default: the model's)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the checkpoint's, else the model's)")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: let the batch dimension vary")


def build_for_export(name: str, checkpoint: Optional[str], in_chans: Optional[int], num_classes: Optional[int]) -> nn.Module:
    kwargs = {}
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    return create_model(name, **kwargs).eval()


def run(args: argparse.Namespace) -> int:
    height, width = args.img_size
    if height < 1 or width < 1:
        raise ValueError(f"--img-size must be positive, got {height} {width}")
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".onnx", ".pt", ".ts"):
        raise ValueError(f"--output must end in .onnx (ONNX) or .pt/.ts (TorchScript), got {args.output!r}")
    model = build_for_export(args.model, args.checkpoint, args.in_chans, args.num_classes)
    chans = getattr(model, "in_chans", model.pretrained_cfg["input_size"][0])
    example = torch.randn(1, chans, height, width, generator=torch.Generator().manual_seed(0))
    if suffix == ".onnx":
        report = export_onnx(model, args.output, example, dynamic_batch=args.dynamic_batch)
        print(f"wrote {report.path} (ONNX opset {OPSET}); onnxruntime vs PyTorch: max |diff| "
              f"{report.max_abs_diff:.2e}, {report.relative_diff:.2e} of the output's scale")
    else:
        report = export_torchscript(model, args.output, example)
        print(f"wrote {report.path} (TorchScript); reloaded vs PyTorch: max |diff| {report.max_abs_diff:.2e}")
    return 0
