"""Choosing the torch device: one rule for every command (``auto`` = the GPU when there is one)."""
from __future__ import annotations

import torch

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
