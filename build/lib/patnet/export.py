"""Export of the deployment form to ONNX and TorchScript, verified against PyTorch.

ONNX: the TorchScript-based exporter (``dynamo=False``) with opset 18, weights embedded, constant
folding on, so the relative-position bias becomes a constant; onnxruntime then runs the file and the
export fails if its output differs from PyTorch's by more than ``rtol`` of the output's scale.
TorchScript: ``torch.jit.script`` of the deployment form (:func:`script`), checked the same way.

The weights come from a ``patnet train`` checkpoint or a plain weights file; their own class count and input
channels win over contradicting flags, and an input size that cannot fit in memory is refused before
anything is allocated.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from torch import nn

from .deploy import deploy
from .device import check_memory, forward_bytes, is_out_of_memory, out_of_memory_errors
from .engine import checkpoint as ckpt
from .engine.inference import load_trained_model
from .errors import InvalidTypeError, InvalidValueError, MissingFileError, UserError
from .fileio import atomic_path
from .models import check_model_name, checkpoint_filter_fn, create_model, patnet_variants
from .models.patnet import read_weights_file
from .runtimes.runner import output_difference

OPSET = 18
FORBIDDEN_ONNX_OPS = ("ScatterND",)


@dataclass
class ExportReport:
    path: Path
    fmt: str
    max_abs_diff: float
    relative_diff: float
    op_types: Sequence[str] = ()


def _check_example(example: torch.Tensor) -> None:
    if not torch.is_tensor(example) or example.dim() < 1:
        raise InvalidTypeError(f"the example input must be a batched tensor, e.g. torch.randn(1, 3, 224, 224), got "
                               f"{type(example).__name__}")


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, dynamic_batch: bool = False,
                rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as ONNX and verify it with onnxruntime."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    _check_example(example)
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
        max_abs, relative = output_difference(expected, output)
        if relative > rtol:
            raise RuntimeError(f"onnxruntime output differs from PyTorch by {relative:.2e} of its scale "
                               f"(allowed {rtol:.0e})")
    return ExportReport(path, "onnx", max_abs, relative, op_types)


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` after dropping stale entries of TorchScript's builtin table that name one of
    ``model``'s attribute values.

    That table maps ``id(function)`` to an operator, and torch registers many operators there without keeping
    the function alive; once one is freed, a new object can take its address, and TorchScript then compiles
    that attribute as the operator ("builtin cannot be used as a value"; seen once in CI, on a Conv2d's padding
    list, scripting patnet_t1). A live attribute value that is not callable is never a builtin, so an entry
    under its id is stale.
    """
    table = torch.jit._builtins._get_builtin_table()
    for module in model.modules():
        for value in vars(module).values():
            if not callable(value):
                table.pop(id(value), None)
    return torch.jit.script(model)


@torch.no_grad()
def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor, rtol: float = 1e-4) -> ExportReport:
    """Write ``model``'s deployment form to ``path`` as a scripted TorchScript module and verify it."""
    path = Path(path)
    _check_example(example)
    folded = deploy(model)
    scripted = script(folded)
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))
        loaded = torch.jit.load(str(tmp))
        max_abs, relative = output_difference(folded(example), loaded(example))
        if relative > rtol:
            raise RuntimeError(f"TorchScript output differs from PyTorch by {relative:.2e} of its scale")
    return ExportReport(path, "torchscript", max_abs, relative)


def _checkpoint_counts(name: str, state_dict: dict) -> tuple[Optional[int], Optional[int]]:
    """(classes, input channels) of plain weights for model ``name``: the rows of its classifier and the input
    channels of its first conv, found by the names timm's pretrained cfg gives them (None where absent)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if name.split(".")[0] in patnet_variants():
        state_dict = checkpoint_filter_fn(state_dict)  # the authors' layout, Lightning wrappers
    counts = []
    for layer, dim in ((getattr(cfg, "classifier", None), 0), (getattr(cfg, "first_conv", None), 1)):
        layer = layer[0] if isinstance(layer, (list, tuple)) else layer
        weight = state_dict.get(f"{layer}.weight") if layer else None
        counts.append(int(weight.shape[dim]) if torch.is_tensor(weight) and weight.dim() > dim else None)
    return counts[0], counts[1]


def _agreed(flag: str, given: Optional[int], stored: Optional[int], source: str) -> Optional[int]:
    """The checkpoint's own count; a flag may repeat it but not contradict it (``--num-classes 0``, the
    pooled features without the classifier, is an explicit choice and always allowed)."""
    if given is None or stored is None or given == stored or (flag == "--num-classes" and given == 0):
        return stored if stored is not None else given
    features = " or pass --num-classes 0 to export its pooled features" if flag == "--num-classes" else ""
    raise InvalidValueError(f"{flag} {given} contradicts the checkpoint {source}, which has {stored}; drop {flag} "
                            f"(the checkpoint's own {stored} is used){features}")


def is_training_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ``patnet train`` run or checkpoint folder, or a weights file one wrote."""
    path = Path(path)
    if path.is_dir():
        return True
    try:
        ckpt.read_metadata(path)
    except (InvalidValueError, MissingFileError):
        return False
    return True


def _from_weights_file(name: Optional[str], checkpoint: str, in_chans: Optional[int],
                       num_classes: Optional[int]) -> nn.Module:
    if name is None:
        raise InvalidValueError(f"--model is needed with a plain weights file ({checkpoint}); it may be left out "
                                "only for a `patnet train` checkpoint")
    check_model_name(name)
    state_dict = read_weights_file(checkpoint)
    stored_classes, stored_chans = _checkpoint_counts(name, state_dict)
    classes = _agreed("--num-classes", num_classes, stored_classes, checkpoint)
    chans = _agreed("--in-chans", in_chans, stored_chans, checkpoint)
    try:
        return create_model(name, num_classes=classes, in_chans=chans, pretrained=True,
                            pretrained_cfg_overlay=dict(state_dict=state_dict))
    except RuntimeError as exc:  # timm's strict loading, for models other than PATNet
        if "Error(s) in loading state_dict" not in str(exc):
            raise
        raise InvalidValueError(f"the checkpoint {checkpoint} does not fit {name}: {str(exc).splitlines()[1:2]}; "
                                "pass --model and the architecture it was trained with") from None


def build_for_export(name: Optional[str], checkpoint: Optional[str], in_chans: Optional[int],
                     num_classes: Optional[int]) -> nn.Module:
    """Model ``name`` in eval mode, with the weights of ``checkpoint`` if given: a ``patnet train`` checkpoint
    (run folder, ``RUN/best``, checkpoint folder or its weights; model, arguments and counts come from it, so
    ``name`` may be None) or a plain state dict / safetensors file. The checkpoint's class count and input
    channels win: a contradicting ``num_classes``/``in_chans`` is an error; ``num_classes=0`` drops the classifier
    (the pooled features)."""
    if checkpoint is None:
        if name is None:
            raise InvalidValueError("pass --model NAME, or --checkpoint with a `patnet train` checkpoint")
        model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    elif is_training_checkpoint(checkpoint):
        model, meta = load_trained_model(checkpoint, expected_model=name)
        _agreed("--num-classes", num_classes, meta["num_classes"], checkpoint)
        _agreed("--in-chans", in_chans, meta["in_chans"], checkpoint)
    else:
        model = _from_weights_file(name, checkpoint, in_chans, num_classes)
    if num_classes == 0 and model.num_classes != 0:
        model.reset_classifier(0)
    return model.eval()


def _check_arguments(output: str | Path, img_size: Sequence[int], in_chans: Optional[int],
                     num_classes: Optional[int]) -> str:
    """One-line errors for impossible export arguments; returns the output's format suffix."""
    if (not isinstance(img_size, (tuple, list)) or len(img_size) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in img_size)):
        shown = " ".join(map(str, img_size)) if isinstance(img_size, (tuple, list)) else repr(img_size)
        raise InvalidValueError(f"--img-size {shown} is invalid: expected a height and a width, integers >= 1")
    for flag, value, low in (("--in-chans", in_chans, 1), ("--num-classes", num_classes, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InvalidValueError(f"{flag} {value} is invalid: expected an integer >= {low}"
                                    f"{' (0: the pooled features, without the classifier)' if low == 0 else ''}")
    suffix = Path(output).suffix.lower()
    if suffix not in (".onnx", ".xml", ".pt", ".ts"):
        raise InvalidValueError(f"--output must end in .onnx (ONNX), .xml (OpenVINO IR) or .pt/.ts (TorchScript), "
                                f"got {str(output)!r}")
    return suffix


def _check_input_size(model: nn.Module, example: torch.Tensor) -> None:
    """Run ``example`` through ``model`` so that a size it cannot take is one clear error before exporting."""
    try:
        with torch.no_grad():
            model(example)
    except (RuntimeError, AssertionError, ValueError) as exc:
        if isinstance(exc, UserError) or is_out_of_memory(exc):
            raise
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".") or type(exc).__name__
        raise InvalidValueError(f"the model cannot take {example.shape[2]}x{example.shape[3]} inputs ({reason}); "
                                "choose another --img-size") from None


def export_model(name: Optional[str], output: str | Path, checkpoint: Optional[str] = None,
                 img_size: tuple[int, int] = (224, 224), in_chans: Optional[int] = None,
                 num_classes: Optional[int] = None, dynamic_batch: bool = False) -> ExportReport:
    """Build model ``name`` (with ``checkpoint``'s weights, see :func:`build_for_export`) and export its
    deployment form to ``output``: ONNX for ``.onnx``, OpenVINO IR for ``.xml`` (with its ``.bin``), TorchScript
    for ``.pt``/``.ts``; verified against eager PyTorch on a seeded
    ``img_size`` example. The memory the export needs is estimated first: a size too large is an error."""
    suffix = _check_arguments(output, img_size, in_chans, num_classes)
    model = build_for_export(name, checkpoint, in_chans, num_classes)
    chans = getattr(model, "in_chans", model.pretrained_cfg["input_size"][0])
    height, width = img_size
    what, fix = f"exporting at {height}x{width}", "use a smaller --img-size"
    check_memory(forward_bytes(model, 2 if dynamic_batch else 1, chans, height, width), torch.device("cpu"),
                 what, fix)
    with out_of_memory_errors(what, fix):
        example = torch.randn(1, chans, height, width, generator=torch.Generator().manual_seed(0))
        _check_input_size(model, example)
        if suffix == ".onnx":
            return export_onnx(model, output, example, dynamic_batch=dynamic_batch)
        if suffix == ".xml":
            from .runtimes import export_openvino

            return export_openvino(model, output, example, dynamic_batch=dynamic_batch)
        return export_torchscript(model, output, example)
