"""Folding affine maps into 1x1 convolutions, for the deployment forms' ``fuse`` methods.

Conv -> BN pairs fold with torch's own ``fuse_conv_bn_eval``; these helpers cover what it does not:
an affine map *before* a 1x1 conv, and an activation that may overwrite its input.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def conv_with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` that has a (zero) bias if it had none."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight)
        fused.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(fused.bias))
    return fused


@torch.no_grad()
def fold_input_affine(conv: nn.Conv2d, scale: Tensor, shift: Tensor, start: int) -> None:
    """Make 1x1 ``conv`` (with bias) absorb ``x * scale + shift`` on input channels ``start:`` in place."""
    weight = conv.weight[:, start:, 0, 0]
    conv.bias.add_(weight @ shift)
    conv.weight[:, start:].mul_(scale.view(1, -1, 1, 1))


def in_place(act: nn.Module) -> nn.Module:
    """A copy of activation ``act`` that overwrites its input when it has that option (``inplace``).

    Safe where the input is a temporary nothing else reads, as inside a deployed MLP; it saves an
    allocation and a pass over the block's widest tensor (~4% of patnet_t2's latency).
    """
    act = copy.copy(act)
    if hasattr(act, "inplace"):
        act.inplace = True
    return act
