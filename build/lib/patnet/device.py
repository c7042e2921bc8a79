"""Choosing the torch device (one rule for every command: ``auto`` = the GPU when there is one) and what fits
on it: a memory estimate checked before allocating, and allocation failures as one-line errors."""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator

import torch
from torch import nn

from .errors import InvalidValueError

AUTO = "auto"


def resolve_device(spec: str | torch.device | None = AUTO) -> torch.device:
    """The device ``spec`` names: ``None`` or ``"auto"`` is CUDA when available, else the CPU; ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` are checked against this machine."""
    if spec is None or spec == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InvalidValueError(f"unknown device {str(spec)!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidValueError(f"device {str(spec)!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(f"device {str(spec)!r} was requested but this machine has no usable CUDA GPU "
                                    "(torch.cuda.is_available() is False); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidValueError(f"device {str(spec)!r} does not exist: this machine has "
                                    f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (CUDA's free memory, the CPU's MemAvailable); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as meminfo:
            return int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _largest_output_numel(model: nn.Module, example: torch.Tensor) -> int:
    """The element count of the largest tensor any one module of ``model`` returns for ``example``."""
    largest = 0

    def record(module, inputs, output) -> None:
        nonlocal largest
        outputs = output if isinstance(output, (tuple, list)) else [output]
        largest = max([largest, *(t.numel() for t in outputs if torch.is_tensor(t))])

    hooks = [module.register_forward_hook(record) for module in model.modules()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return largest


def forward_bytes(model: nn.Module, batch: int, in_chans: int, height: int, width: int, probe: int = 64) -> int:
    """A lower bound on the memory a forward pass of ``model`` over a ``batch x in_chans x height x width``
    input takes: the input plus the largest output of one layer, measured on one ``probe``-sized image and
    scaled by the pixel count (layers that grow faster, like attention, only make the real need larger)."""
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    element = torch.empty((), dtype=dtype).element_size()
    needed = batch * in_chans * height * width * element
    probe_h, probe_w = min(height, probe), min(width, probe)
    try:
        largest = _largest_output_numel(model, torch.zeros(1, in_chans, probe_h, probe_w, dtype=dtype, device=device))
    except Exception:  # noqa: BLE001 - a model that cannot take the probe size: the input alone is the bound
        return needed
    return needed + batch * largest * element * (height * width) // (probe_h * probe_w)


def _gib(size: int) -> str:
    return f"{size / 2 ** 30:.1f} GiB"


def check_memory(needed: int, device: torch.device, what: str, fix: str) -> None:
    """A one-line error before allocating when ``what`` needs more than ``device`` has free."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise InvalidValueError(f"{what} needs at least {_gib(needed)} of memory but {device} has {_gib(free)} "
                                f"free; {fix}")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch failing to allocate memory (CPU or CUDA)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


@contextlib.contextmanager
def out_of_memory_errors(what: str, fix: str) -> Iterator[None]:
    """Turn an allocation failure inside the block (CPU or CUDA) into a one-line error saying what to change."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is a RuntimeError too
        if not is_out_of_memory(exc):
            raise
        message = " ".join(str(exc).split())
        size = re.search(r"tried to allocate (\d+) bytes", message)
        tried = re.search(r"tried to allocate ([\d.]+ [KMGT]iB)", message, re.IGNORECASE)
        amount = _gib(int(size.group(1))) if size else tried.group(1) if tried else "more than is free"
        raise InvalidValueError(f"{what} ran out of memory (it tried to allocate {amount}); {fix}") from None
