"""PATNet's token mixers and the MLP's spatial attention.

All mixers split the channels into ``Cp = C // n_div`` convolved channels (a 3x3 conv, FasterNet's
PConv) and ``Cu = C - Cp`` "untouched" ones, which PATNet gives cheap attention instead of nothing:

* :class:`PartialConv` — FasterNet's PConv: untouched channels pass through.
* :class:`PartialChannelAttn` — PAT_ch: a gate from per-channel mean and std (stages 1-3).
* :class:`PartialSelfAttn` — PAT_sf: multi-head self-attention with relative position bias (stage 4).
* :class:`PartialSpatialAttn` — PAT_sp: appended to the MLP, a one-channel spatial gate on half the
  channels and a 1x1 conv on the other half.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidValueError
from .folding import fold_input_affine
from .fused import FusedChannelGate, FusedPartialChannelAttn, FusedPartialSelfAttn, FusedSpatialGate
from .rel_pos import RelPosBias
from .stats import bn_scale_shift, spatial_mean_std


def split_channels(dim: int, n_div: int) -> tuple[int, int]:
    """(convolved, untouched) channel counts of a partial mixer of width ``dim``."""
    conv_dim = dim // n_div
    if conv_dim < 1:
        raise InvalidValueError(f"n_div={n_div} leaves no channel to convolve at width {dim}; use n_div <= {dim}")
    return conv_dim, dim - conv_dim


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose backward hands on its incoming gradient made contiguous in the input's memory format."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=ctx.memory_format)


@torch.jit.unused
def _contiguous_grad_function(x: Tensor) -> Tensor:
    return _ContiguousGrad.apply(x)


def contiguous_grad(x: Tensor) -> Tensor:
    """``x``, with its gradient made contiguous (in ``x``'s memory format) on the way back (eager training only;
    TorchScript and ``torch.compile`` get ``x``).

    For a BatchNorm whose output is concatenated with other channels: ``torch.cat``'s backward hands each input
    a strided slice of the output's gradient, on which ATen's BatchNorm backward takes a slow path (AMD EPYC
    Zen 5, two threads, batch 128, docs/bench/train_micro.py: a 96x4x4 BN forward and backward in bf16 157 us with
    a contiguous gradient, 736 us with the slice; fp32 295 against 497). One copy of the slice costs less."""
    if torch.jit.is_scripting():
        return x
    if not x.requires_grad or torch.compiler.is_compiling():
        return x
    return _contiguous_grad_function(x)


class PartialConv(nn.Module):
    """PConv: ``[conv3x3(x[:, :Cp]), x[:, Cp:]]``."""

    def __init__(self, dim: int, n_div: int = 4, device=None, dtype=None):
        super().__init__()
        self.conv_dim, self.untouched_dim = split_channels(dim, n_div)
        self.conv = nn.Conv2d(self.conv_dim, self.conv_dim, 3, 1, 1, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        convolved, untouched = torch.split(x, [self.conv_dim, self.untouched_dim], dim=1)
        return torch.cat((self.conv(convolved), untouched), dim=1)


class GaussianChannelGate(nn.Module):
    """PAT_ch's gate: ``hsig(BN(conv_(1,2)([mean, std])))`` per sample and channel, std unbiased.

    The (1, 2) conv is a full cross-channel map of the two statistics (``2 * C * C`` weights). Its weight stays a
    conv's (the checkpoint layout) but runs as the matrix product it is on a ``1 x 2`` map: ``F.linear`` of the
    ``(B, 2C)`` statistics with the ``(C, 2C)`` flattened weight, the same sums. oneDNN's conv on such a map costs
    more than its arithmetic: forward and backward at batch 128, two threads, AMD EPYC Zen 5, 96 channels 446 ->
    191 us in fp32 and 440 -> 168 us under bf16 autocast (24 channels: 246 -> 63, 267 -> 113).
    """

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=(1, 2), bias=False, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            raise InvalidValueError(
                "PAT_ch's gate normalises per-sample statistics with BatchNorm, which needs a batch of at "
                "least 2 in training mode; use a larger batch (drop_last=True) or call model.eval()")
        stats = torch.cat(spatial_mean_std(x, summed=True), dim=3).flatten(1)  # (B, C, 1, 2) as (B, 2C)
        scores = F.linear(stats, self.conv.weight.flatten(1))
        return F.hardsigmoid(self.norm(scores.view(x.shape[0], -1, 1, 1)))

    @torch.no_grad()
    def fuse(self, passed: int = 0) -> FusedChannelGate:
        """The deployment form: BN folded into the (1, 2) conv, seen as a linear map of ``[mean, std]``,
        over ``passed`` leading channels that keep a scale of exactly 1 and then the gated ones."""
        scale, shift = bn_scale_shift(self.norm)
        gated = self.conv.weight.shape[0]
        weight = self.conv.weight.new_zeros(gated, 2, passed + gated)
        weight[:, 0, passed:] = self.conv.weight[:, :, 0, 0] * scale[:, None]
        weight[:, 1, passed:] = self.conv.weight[:, :, 0, 1] * scale[:, None]
        return FusedChannelGate(weight.flatten(1).t().contiguous(), shift.clone(), passed)


class PartialChannelAttn(nn.Module):
    """PAT_ch: ``[conv3x3(Xp), BN(Xu * gate(Xu))]``."""

    def __init__(self, dim: int, n_div: int = 4, device=None, dtype=None):
        super().__init__()
        self.conv_dim, self.untouched_dim = split_channels(dim, n_div)
        self.conv = nn.Conv2d(self.conv_dim, self.conv_dim, 3, 1, 1, bias=False, device=device, dtype=dtype)
        self.gate = GaussianChannelGate(self.untouched_dim, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(self.untouched_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        convolved, untouched = torch.split(x, [self.conv_dim, self.untouched_dim], dim=1)
        gated = contiguous_grad(self.norm(untouched * self.gate(untouched)))
        return torch.cat((self.conv(convolved), gated), dim=1)

    @torch.no_grad()
    def fuse_into(self, next_conv: nn.Conv2d) -> FusedPartialChannelAttn:
        """The deployment form; the post-gate BN (affine on the untouched channels) is folded into the input
        channels of ``next_conv``, the 1x1 conv (with bias) that reads this mixer's output, in place."""
        scale, shift = bn_scale_shift(self.norm)
        fold_input_affine(next_conv, scale, shift, start=self.conv_dim)
        return FusedPartialChannelAttn(self.conv, self.gate.fuse(passed=self.conv_dim), self.untouched_dim)


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention over all tokens of a ``(B, C, H, W)`` map, with relative position bias.

    Takes and returns tokens ``(B, H*W, C)``; ``qkv`` has no bias, ``proj`` has one.
    """

    def __init__(self, dim: int, num_heads: int = 4, attn_drop: float = 0.1, proj_drop: float = 0.1,
                 device=None, dtype=None):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise InvalidValueError(f"num_heads={num_heads} does not divide the attention width {dim}; "
                                    f"choose a divisor of {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False, device=device, dtype=dtype)
        self.rel_pos = RelPosBias(num_heads, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, tokens: Tensor, height: int, width: int) -> Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.rel_pos(height, width).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(out))


class PartialSelfAttn(nn.Module):
    """PAT_sf: ``[conv3x3(Xp), Attn(LayerNorm(Xu))]`` (the block adds its own residual)."""

    def __init__(self, dim: int, n_div: int = 4, num_heads: int = 4, attn_drop: float = 0.1,
                 proj_drop: float = 0.1, device=None, dtype=None):
        super().__init__()
        self.conv_dim, self.untouched_dim = split_channels(dim, n_div)
        self.conv = nn.Conv2d(self.conv_dim, self.conv_dim, 3, 1, 1, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(self.untouched_dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = RelPosSelfAttention(self.untouched_dim, num_heads, attn_drop, proj_drop, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        convolved, untouched = torch.split(x, [self.conv_dim, self.untouched_dim], dim=1)
        tokens = self.norm(untouched.flatten(2).transpose(1, 2))
        attended = self.attn(tokens, height, width).transpose(1, 2).reshape(batch, self.untouched_dim, height, width)
        return torch.cat((self.conv(convolved), attended), dim=1)

    @torch.no_grad()
    def fuse(self) -> FusedPartialSelfAttn:
        """The deployment form: LayerNorm affine and attention scale folded into ``qkv``."""
        attn = self.attn
        dim = self.untouched_dim
        qkv = nn.Linear(dim, 3 * dim, bias=True, device=attn.qkv.weight.device, dtype=attn.qkv.weight.dtype)
        qkv.weight.copy_(attn.qkv.weight * self.norm.weight[None, :])
        qkv.bias.copy_(attn.qkv.weight @ self.norm.bias)
        qkv.weight[:dim].mul_(attn.scale)
        qkv.bias[:dim].mul_(attn.scale)
        return FusedPartialSelfAttn(self.conv, qkv, attn.proj, dim, attn.num_heads, self.norm.eps, attn.rel_pos)


class PartialSpatialAttn(nn.Module):
    """PAT_sp: ``[BN(A * hsig(conv1x1(A) -> 1 channel)), conv1x1(BN(B))]`` with A the first ``C - C//2``."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.conv_dim = dim // 2
        self.attn_dim = dim - self.conv_dim
        self.gate_conv = nn.Conv2d(self.attn_dim, 1, 1, bias=False, device=device, dtype=dtype)
        self.gate_norm = nn.BatchNorm2d(self.attn_dim, device=device, dtype=dtype)
        self.pre_norm = nn.BatchNorm2d(self.conv_dim, device=device, dtype=dtype)
        self.conv = nn.Conv2d(self.conv_dim, self.conv_dim, 1, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        attended, convolved = torch.split(x, [self.attn_dim, self.conv_dim], dim=1)
        attended = contiguous_grad(self.gate_norm(attended * F.hardsigmoid(self.gate_conv(attended))))
        return torch.cat((attended, self.conv(self.pre_norm(convolved))), dim=1)

    @torch.no_grad()
    def fuse_into(self, project: nn.Conv2d) -> FusedSpatialGate:
        """The deployment form of the attention half; the conv half ``conv(BN(B))`` is composed into the rows
        B of ``project``, the 1x1 conv (with bias) that feeds this module, in place: two linear maps with
        nothing between them."""
        scale, shift = bn_scale_shift(self.pre_norm)
        inner = self.conv.weight[:, :, 0, 0]
        rows = slice(self.attn_dim, None)
        project.weight[rows] = torch.einsum("oc,ci->oi", inner * scale[None, :],
                                            project.weight[rows, :, 0, 0])[..., None, None]
        project.bias[rows] = inner @ (scale * project.bias[rows] + shift)
        gate_scale, gate_shift = bn_scale_shift(self.gate_norm)
        on_a, on_b = (0, self.conv_dim), (self.attn_dim, 0)  # zero-padding onto the A or B channels
        gate_weight = F.pad(self.gate_conv.weight, (0, 0, 0, 0, *on_a))
        passed = F.pad(gate_scale.new_ones(self.conv_dim), on_b)
        return FusedSpatialGate(gate_weight, F.pad(gate_scale, on_a), passed, F.pad(gate_shift, on_a))
