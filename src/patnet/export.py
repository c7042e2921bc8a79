"""Export of the deployment form to ONNX and TorchScript, verified against PyTorch.

ONNX: the TorchScript-based exporter (``dynamo=False``) with opset 18, weights embedded, constant
folding on, so the relative-position bias becomes a constant; onnxruntime then runs the file and the
export fails if its output differs from PyTorch's by more than ``rtol`` of the output's scale.
TorchScript: ``torch.jit.script`` of the deployment form, checked the same way.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .deploy import deploy
from .errors import InvalidValueError
from .fileio import atomic_path
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


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, dynamic_batch: bool = False,
                rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as ONNX and verify it with onnxruntime."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    folded = deploy(model)
    with atomic_path(path) as tmp:
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
    return ExportReport(path, "onnx", max_abs, relative, op_types)


@torch.no_grad()
def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor, rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as a scripted TorchScript module and verify it."""
    path = Path(path)
    folded = deploy(model)
    scripted = torch.jit.script(folded)
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))
        loaded = torch.jit.load(str(tmp))
        max_abs, relative = _relative(folded(example), loaded(example))
        if relative > rtol:
            raise RuntimeError(f"TorchScript output differs from PyTorch by {relative:.2e} of its scale")
    return ExportReport(path, "torchscript", max_abs, relative)


def build_for_export(name: str, checkpoint: Optional[str], in_chans: Optional[int],
                     num_classes: Optional[int]) -> nn.Module:
    """Model ``name`` in eval mode, with the weights of ``checkpoint`` (a state dict or safetensors file) if given."""
    kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint)) if checkpoint is not None else {}
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs).eval()


def export_model(name: str, output: str | Path, checkpoint: Optional[str] = None,
                 img_size: tuple[int, int] = (224, 224), in_chans: Optional[int] = None,
                 num_classes: Optional[int] = None, dynamic_batch: bool = False) -> ExportReport:
    """Build model ``name`` (with ``checkpoint``'s weights) and export its deployment form to ``output``:
    ONNX for ``.onnx``, TorchScript for ``.pt``/``.ts``; verified on a seeded ``img_size`` example."""
    height, width = img_size
    if height < 1 or width < 1:
        raise InvalidValueError(f"--img-size must be positive, got {height} {width}")
    suffix = Path(output).suffix.lower()
    if suffix not in (".onnx", ".pt", ".ts"):
        raise InvalidValueError(f"--output must end in .onnx (ONNX) or .pt/.ts (TorchScript), got {str(output)!r}")
    model = build_for_export(name, checkpoint, in_chans, num_classes)
    chans = getattr(model, "in_chans", model.pretrained_cfg["input_size"][0])
    example = torch.randn(1, chans, height, width, generator=torch.Generator().manual_seed(0))
    if suffix == ".onnx":
        return export_onnx(model, output, example, dynamic_batch=dynamic_batch)
    return export_torchscript(model, output, example)
