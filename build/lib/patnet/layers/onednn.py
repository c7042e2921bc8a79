"""Eager inference's matrix products and partial 3x3 convs through oneDNN: prepacked weights, the activation fused.

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

The partial mixers' 3x3 convs take oneDNN's conv with a prepacked weight (:class:`PackedConv`) by the same rule
(:func:`takes_onednn_conv`). ``F.conv2d`` sends a single fp32 sample's small conv to ATen's im2col and MKL path
and gives every other call an unpacked weight to reorder.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from ..runtimes.hardware import mkl_gemm_is_slow

MIN_MACS = 2 ** 21
FP32_TAKES_ONEDNN = mkl_gemm_is_slow()  # read once, at import
HAS_KERNEL = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))
HAS_CONV_KERNEL = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                   and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight"))


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
    if not HAS_KERNEL or rows.shape[0] * matrix.shape[0] * matrix.shape[1] < MIN_MACS:
        return False
    return _onednn_inference(rows, matrix)


def takes_onednn_conv(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether the eager ``conv`` of ``x``, a channels-last map or a channel slice of one (channels innermost),
    should run in oneDNN with a packed weight: by :func:`takes_onednn`'s rule, :data:`MIN_MACS` included, for
    zero-padded convs with numeric padding. Against ``F.conv2d`` for the partial mixers' 3x3 convs on an AMD EPYC
    Zen 5, eager fp32, whole models in one process (docs/bench/change-ab.md, one / two threads): patnet_t2 0.960 /
    0.952 of its time, t1 0.955 / 0.987, s 0.928 (two threads). patnet_t0's convs (1.8M multiply-adds each) are
    faster alone (14x14, 32 channels: 55 -> 37 us) but made the whole model 0.99 / 1.03 of its time, so they stay
    under the threshold."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if not HAS_CONV_KERNEL or x.stride(1) != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return False
    weight = conv.weight
    out_height, out_width = (size // stride for size, stride in zip(x.shape[2:], conv.stride))
    out_channels, in_channels, kernel_height, kernel_width = weight.shape  # shapes, not weight[0]: no select op
    if x.shape[0] * out_height * out_width * in_channels * kernel_height * kernel_width * out_channels < MIN_MACS:
        return False
    return _onednn_inference(x, weight)


def _onednn_inference(x: Tensor, weight: Tensor) -> bool:
    """The dtype, device and gradient half of :func:`takes_onednn`'s rule."""
    if x.dtype != weight.dtype or torch.is_autocast_enabled("cpu"):  # autocast: the ATen op's casts decide
        return False
    if x.dtype != torch.bfloat16 and not (x.dtype == torch.float32 and FP32_TAKES_ONEDNN):
        return False
    if x.device.type != "cpu":
        return False
    return not ((x.requires_grad and torch.is_grad_enabled()) or weight.is_inference())


class PackedWeight:
    """A weight packed for oneDNN, packed again when the weight changes: another tensor object or storage,
    another dtype, or an in-place write (its version counter). The source tensor is held, so its address
    cannot pass to another tensor while the packed copy lives. Copies and pickles start empty: a packed tensor
    has no storage to copy."""

    def __init__(self) -> None:
        self._source: Optional[Tensor] = None
        self._key: Optional[Tuple[int, int, torch.dtype]] = None
        self._packed: Optional[Tensor] = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def _packed_from(self, weight: Tensor, pack: Callable[[Tensor], Tensor]) -> Tensor:
        """``pack(weight)``, kept until ``weight`` changes."""
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if weight is not self._source or key != self._key:
            with torch.no_grad():
                self._packed = pack(weight)
            self._source, self._key = weight, key
        return self._packed


class PackedMatrix(PackedWeight):
    """An ``(in, out)`` matrix packed for oneDNN's linear."""

    def packed(self, matrix: Tensor, rows: int) -> Tensor:
        """``matrix`` in oneDNN's layout, chosen for ``rows`` rows at the first call (any count works later)."""
        return self._packed_from(matrix, lambda m: torch.ops.mkldnn._reorder_linear_weight(m.t().contiguous(), rows))

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


class PackedConv(PackedWeight):
    """A conv's weight packed for oneDNN's conv."""

    def conv(self, x: Tensor, conv: nn.Conv2d) -> Tensor:
        """``conv(x)`` for a channels-innermost ``x`` and a zero-padded ``conv`` with numeric padding, the weight
        packed for the first call's input shape (any shape works later)."""
        padding, stride, dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
        shape = list(x.shape)
        packed = self._packed_from(conv.weight, lambda w: torch.ops.mkldnn._reorder_convolution_weight(
            w.contiguous(), padding, stride, dilation, conv.groups, shape))
        return torch.ops.mkldnn._convolution_pointwise(x, packed, conv.bias, padding, stride, dilation, conv.groups,
                                                       "none", [], "")
