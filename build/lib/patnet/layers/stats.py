"""Statistics shared by the training and deployment forms: per-channel spatial moments, BatchNorm affines."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


def spatial_mean_std(x: Tensor, summed: bool = False) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and unbiased std over H and W, each ``(B, C, 1, 1)``.

    ``std = sqrt(mean((x - mean)^2) * n / (n - 1))`` with ``n = H * W``: two passes, as exact as
    ``torch.std_mean``. Kept 4-D on purpose: every runtime keeps its own activation layout (no
    flatten), which makes this 2x faster than a flattened form in eager PyTorch on channels-last maps
    and avoids layout reorders in OpenVINO; ``torch.var_mean`` is about 8x slower on CPU.

    ``summed`` (the training form's choice) takes each mean as a sum divided by ``n`` (the same values):
    a sum's backward is a free broadcast view of the incoming gradient, where a mean's writes ``grad / n``
    over the whole map. Statistics forward and backward at batch 128, two threads, AMD EPYC Zen 5
    (docs/bench/train_micro.py): fp32 1.3-2.0x faster on 4x4 to 32x32 maps; bf16 1.2-1.4x faster from 8x8 up,
    1.3x slower at 4x4. Whole training steps: docs/bench/training.md. The deploy form's graphs (exports) keep
    the means: ReduceMean is one node, a sum and a division two.
    """
    mean, variance = _mean_variance(x, summed)
    return mean, _unbiased_std(variance, x.shape[2] * x.shape[3])


def _mean_variance(x: Tensor, summed: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over H and W, each ``(B, C, 1, 1)``: two passes."""
    count = x.shape[2] * x.shape[3]
    mean = _spatial_average(x, count, summed)
    return mean, _spatial_average((x - mean).square(), count, summed)


def _spatial_average(x: Tensor, count: int, summed: bool) -> Tensor:
    """The mean of ``x`` over H and W, ``(B, C, 1, 1)``: a sum divided by ``count`` when ``summed``."""
    if summed:
        return x.sum(dim=(2, 3), keepdim=True) / count
    return x.mean(dim=(2, 3), keepdim=True)


def bessel_factor(count: int) -> float:
    """``n / (n - 1)``, which turns the biased variance of ``n`` values into the unbiased one (1 for one value)."""
    return count / max(count - 1, 1)


def _unbiased_std(variance: Tensor, count: int) -> Tensor:
    """``sqrt(variance * n / (n - 1))`` from the biased variance of ``n`` values (0 for a single value)."""
    return torch.sqrt(variance * bessel_factor(count))


def mean_biased_std(x: Tensor) -> Tensor:
    """``(B, 2C)`` rows ``[mean, biased std]`` over H and W, two passes (the exported gate's statistics: its
    weight's std rows carry ``sqrt(n / (n - 1))``, :func:`bessel_factor`)."""
    mean, variance = _mean_variance(x)
    return torch.cat((mean, variance.sqrt()), dim=1).flatten(1)


def stacked_mean_std(x: Tensor) -> Tensor:
    """:func:`spatial_mean_std` as ``(B, 2C)`` rows ``[mean, std]``, for inference (not differentiable).

    A single channels-last sample goes through ATen's BatchNorm statistics kernel: its batch statistics
    over (N, H, W) are this sample's over (H, W), mean and biased variance in one two-pass call (as exact
    as :func:`spatial_mean_std`). Against that function on a Xeon, one thread, fp32, channels-last:
    2x faster at 30x56x56, 2.5x at 240x7x7 (three ops instead of six; the per-call cost dominates small
    maps). Whole models, eager, one process against FasterNet: on the Xeon fp32 T0 0.93 -> 0.90, T2
    0.75 -> 0.74 (1 thread); on an AMD EPYC fp32 unchanged (new / old 0.99-1.02), bf16 1-3% faster.
    NCHW maps, batches and inputs that need gradients take :func:`spatial_mean_std` (the kernel is slower
    on NCHW planes and has no gradient).
    """
    batch, channels, height, width = x.shape
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    if batch != 1 or x.requires_grad or not channels_last:
        return torch.cat(spatial_mean_std(x), dim=1).flatten(1)
    mean, variance = torch.batch_norm_update_stats(x, None, None, 0.0)
    return torch.cat((mean, _unbiased_std(variance, height * width))).view(1, 2 * channels)


def compiled_mean_std(x: Tensor) -> Tensor:
    """:func:`stacked_mean_std` for ``torch.compile``: ``torch.var_mean`` in fp32, which inductor lowers to one
    Welford pass over the map (the two-pass form reads it twice). Exact to fp32 rounding; in eager PyTorch
    ``var_mean`` is slower than the two-pass form, so only compiled graphs take it."""
    correction = 1 if x.shape[2] * x.shape[3] > 1 else 0  # a single value: std 0, as spatial_mean_std
    variance, mean = torch.var_mean(x.float(), dim=(2, 3), correction=correction)
    return torch.cat((mean, variance.sqrt()), dim=1)


def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale
