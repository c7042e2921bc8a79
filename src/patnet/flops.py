"""Counting multiply-adds (MACs) the way this project reports them.

MACs = ``torch.utils.flop_counter.FlopCounterMode`` total / 2, batch 1, with scaled-dot-product
attention forced onto the math path: the fused CPU kernels have no FLOP formula and would drop most
of an attention block's work from the count.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .errors import InvalidValueError


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass of ``model`` on a ``(batch_size, *input_size)`` input.

    The input requires a gradient, so a deployed PATNet takes its differentiable operators: its inference-only
    kernels (oneDNN's prepacked products, the C++ gate) are opaque to ``FlopCounterMode``, which counted 96M of
    deployed patnet_t2's 1.03G multiply-adds on an AMD CPU, where eager fp32 products go to oneDNN."""
    if len(input_size) != 3:
        raise InvalidValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(batch_size, *input_size, device=device, dtype=dtype, requires_grad=dtype.is_floating_point)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), torch.enable_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def achieved_gflops(macs: int, seconds: float, batch_size: int = 1) -> float:
    """Achieved GFLOP/s of a forward pass of ``macs`` multiply-adds per image taking ``seconds`` per batch."""
    if seconds <= 0:
        raise InvalidValueError(f"seconds must be positive, got {seconds}")
    return 2 * macs * batch_size / seconds / 1e9
