"""Eager inference's matrix products through oneDNN's linear kernel: prepacked weights, the activation fused.

``torch.addmm`` runs fp32 products in MKL, whose GEMM is slow on AMD CPUs
(:func:`~patnet.runtimes.hardware.mkl_gemm_is_slow`), and the activation after it is another pass over the
MLP's widest tensor. oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor uses for
frozen bf16 weights) takes a weight packed once into its own layout and applies GELU or ReLU as it writes.
A/B on an AMD EPYC (avx512f, avx512_bf16), eager, one process, against FasterNet
(docs/bench/epyc/onednn-ab.md), fp32 one / two threads: patnet_t0 0.84 -> 0.67 / 1.02 -> 0.89,
t1 0.77 -> 0.55 / 1.09 -> 0.85, t2 0.64 -> 0.40 / 0.99 -> 0.69, s 0.69 -> 0.40 / 1.05 -> 0.64; bf16 2-14% faster.
Tiny products lose to oneDNN's per-call cost (with every product in oneDNN the 64 px model went 1.14 -> 1.25),
so products under :data:`MIN_MACS` keep ``torch.addmm``, as do graphs (compile, exports, TorchScript), inputs
that need gradients, weights made under ``torch.inference_mode``, and fp32 where MKL is fast (Intel).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..runtimes.hardware import mkl_gemm_is_slow

MIN_MACS = 2 ** 21
FP32_TAKES_ONEDNN = mkl_gemm_is_slow()  # read once, at import
HAS_KERNEL = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
               and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def post_op(act: nn.Module) -> Optional[Tuple[str, str]]:
    """oneDNN's name and algorithm for activation ``act`` when it can fuse it (GELU, ReLU), else None."""
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate
    if isinstance(act, nn.ReLU):
        return "relu", ""
    return None


def takes_onednn(rows: Tensor, matrix: Tensor) -> bool:
    """Whether the eager product of ``rows`` with an ``(in, out)`` ``matrix`` should run in oneDNN: CPU
    inference (no gradient, no graph being traced), bf16 anywhere, fp32 where MKL's GEMM is slow, and at
    least :data:`MIN_MACS` multiply-adds, ``rows`` and ``matrix`` of one dtype, autocast off (its casts belong to
    ``torch.addmm``). Not for weights made under ``torch.inference_mode``: they keep no version counter, so a
    packed copy could not notice an in-place change."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():  # first: a tensor query here would break a graph
        return False
    if rows.dtype != matrix.dtype or torch.is_autocast_enabled("cpu"):  # autocast: addmm's casts decide
        return False
    if rows.dtype != torch.bfloat16 and not (rows.dtype == torch.float32 and FP32_TAKES_ONEDNN):
        return False
    if rows.shape[0] * matrix.shape[0] * matrix.shape[1] < MIN_MACS or rows.device.type != "cpu" or not HAS_KERNEL:
        return False
    return not ((rows.requires_grad and torch.is_grad_enabled()) or matrix.is_inference())


class PackedMatrix:
    """An ``(in, out)`` matrix packed for oneDNN's linear, packed again when the matrix changes: another tensor
    object or storage, another dtype, or an in-place write (its version counter). The source tensor is held, so
    its address cannot pass to another tensor while the packed copy lives. Copies and pickles start empty: a
    packed tensor has no storage to copy."""

    def __init__(self) -> None:
        self._source: Optional[Tensor] = None
        self._key: Optional[Tuple[int, int, torch.dtype]] = None
        self._packed: Optional[Tensor] = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def packed(self, matrix: Tensor, rows: int) -> Tensor:
        """``matrix`` in oneDNN's layout, chosen for ``rows`` rows at the first call (any count works later)."""
        key = (matrix.data_ptr(), matrix._version, matrix.dtype)
        if matrix is not self._source or key != self._key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(matrix.t().contiguous(), rows)
            self._source, self._key = matrix, key
        return self._packed

    def product(self, rows: Tensor, matrix: Tensor, bias: Tensor, act: Optional[Tuple[str, str]] = None) -> Tensor:
        """``act(rows @ matrix + bias)`` in one oneDNN call (no activation when ``act`` is None)."""
        name, algorithm = act if act is not None else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(rows, self.packed(matrix, rows.shape[0]), bias, name, [],
                                                  algorithm)

    def product_plus(self, rows: Tensor, matrix: Tensor, bias: Tensor, other: Tensor) -> Tensor:
        """``rows @ matrix + bias + other`` in one oneDNN call (``other`` shaped like the result: a residual
        added as the product is written)."""
        return torch.ops.mkldnn._linear_pointwise.binary(rows, other, self.packed(matrix, rows.shape[0]), bias,
                                                         "add")
