"""Image relative position bias of PATNet's self-attention (iRPE, euclidean method, bias mode, keys).

Tokens ``i`` and ``j`` at (row, col) get the bucket of their rounded euclidean distance
``d = round(sqrt(drow^2 + dcol^2))``: ``d`` itself up to ``alpha``, then a logarithmic bucket capped at
``beta``. The bias added to logit (i, j) of head h is ``table[h, bucket + beta]``.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple, TypeVar

import torch
from torch import Tensor, nn

SHAPES_KEPT = 8  # per-shape caches keep the most recently used map shapes (detection sees many sizes)
Kept = TypeVar("Kept")


def remember(cache: Dict, key, value: Kept, limit: int = SHAPES_KEPT) -> Kept:
    """Store ``value`` under ``key`` in ``cache``, dropping the least recently stored entries beyond ``limit``."""
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > limit:
        cache.pop(next(iter(cache)))
    return value


def euclidean_bucket_index(
        height: int,
        width: int,
        alpha: float = 20.0,
        beta: float = 40.0,
        gamma: float = 160.0,
        device: torch.device | None = None,
) -> Tensor:
    """``(H*W, H*W)`` long tensor of table columns for every (query, key) pair of an H x W map."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    drow = rows[:, None] - rows[None, :]
    dcol = cols[:, None] - cols[None, :]
    # float32 on purpose: the authors' index is computed in float32, and rounding ties must agree.
    dist = (drow * drow + dcol * dcol).float().sqrt().round()
    far = alpha + torch.log(dist.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    bucket = torch.where(dist <= alpha, dist, far.round().clamp(max=beta))
    return bucket.long() + int(beta)


class RelPosBias(nn.Module):
    """Learnable per-head bias table (zero-initialised) expanded to ``(1, heads, L, L)`` for any map.

    The bucket index depends only on (H, W); it is computed once per shape and device and kept in this
    module (not in a global; the last ``SHAPES_KEPT`` shapes), so non-square and changing input sizes all
    work. TorchScript skips the cache and recomputes the index.
    """

    __jit_ignored_attributes__ = ["_index_cache"]

    def __init__(self, num_heads: int, alpha: float = 20.0, beta: float = 40.0, gamma: float = 160.0,
                 device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.bias_table = nn.Parameter(torch.zeros(num_heads, 2 * int(beta) + 1, device=device, dtype=dtype))
        self._index_cache: Dict[Tuple[int, int, str], Tensor] = {}

    def bucket_index(self, height: int, width: int) -> Tensor:
        """Flattened ``(H*W*H*W,)`` column index into the table, cached per shape and device."""
        device = self.bias_table.device
        if torch.jit.is_scripting():
            return euclidean_bucket_index(height, width, self.alpha, self.beta, self.gamma, device).flatten()
        return self._cached_index(height, width, device)

    @torch.jit.unused
    def _cached_index(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        index = self._index_cache.get(key)
        if index is None:
            index = euclidean_bucket_index(height, width, self.alpha, self.beta, self.gamma, device).flatten()
        return remember(self._index_cache, key, index)

    def forward(self, height: int, width: int) -> Tensor:
        length = height * width
        index = self.bucket_index(height, width)
        return self.bias_table[:, index].view(1, self.num_heads, length, length)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, alpha={self.alpha:g}, beta={self.beta:g}, gamma={self.gamma:g}"
