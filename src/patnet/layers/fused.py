"""Deployment forms of PATNet's blocks: BatchNorms and affine maps folded into neighbouring linear maps.

Exact (up to float rounding) for a model in eval mode. What folds (architecture.md, section 4):
conv -> BN pairs; PAT_ch's gate BN into its (1, 2) conv; PAT_ch's post-gate BN into the MLP's first 1x1
conv (it is affine on those input channels); PAT_sp's BN -> 1x1 conv, and that conv into the MLP's second
1x1 conv (two linear maps with nothing between them); PAT_sf's LayerNorm affine and the attention scale
into ``qkv``. PAT_sp's post-gate BN, the LayerNorm's normalisation and the softmax stay.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_kernels
from .onednn import FP32_TAKES_ONEDNN, MIN_MACS, PackedConv, PackedMatrix, post_op, takes_onednn, takes_onednn_conv
from .rel_pos import SHAPES_KEPT, Kept, remember
from .stats import bessel_factor, compiled_mean_std, mean_biased_std, stacked_mean_std


def _compiling() -> bool:
    """Whether ``torch.compile`` is tracing this call (never under TorchScript)."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling()


def _asks_every_call() -> bool:
    """Whether the deployed blocks must ask their path rules afresh (:class:`_RemembersChoices`): anything but
    plain eager inference, i.e. gradients on, a graph being compiled or traced (exports too), autocast on.
    Compilation is asked before tracing, whose query would break a dynamo graph. Not for TorchScript."""
    return (torch.is_grad_enabled() or _compiling() or torch._C._is_tracing()
            or torch._C._is_any_autocast_enabled())


def _kernel_takes(tensors: Tuple[Tensor, ...]) -> bool:
    """Whether the C++ kernels (:mod:`~patnet.layers.cpu_kernels`) may take ``tensors``: CPU tensors of one dtype,
    float32 or bfloat16, with autocast off (which would give the products another dtype than their inputs), none
    needing a gradient (the ops have no backward), and no ``torch.jit`` trace recording (a traced graph would need
    the library)."""
    first = tensors[0]
    if torch.jit.is_tracing() or torch._C._is_any_autocast_enabled() or first.dtype not in (torch.float32,
                                                                                           torch.bfloat16):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cpu" and t.dtype == first.dtype for t in tensors)


class _RemembersChoices(nn.Module):
    """A deployed module that remembers, per input signature, which path each of its steps takes in eager
    inference: every rule below (the C++ call, oneDNN or ATen, rows or convs) reads only the input's shape,
    strides, dtype and device, the global modes :func:`_asks_every_call` pins, and the module's own weights,
    whose dtypes and devices change only through ``_apply`` (``.to()``, ``.half()``, ...) or a state-dict load,
    which empty the memory. Asking the rules cost 1-3 us each (module attribute lookups, mode queries), 5-10 us
    a block; a remembered choice costs about 1 us. One process on an AMD EPYC Zen 5 against the methods that
    asked every call (docs/bench/change-ab.md, ``choices``), eager, one / two threads: the 64 px model 0.95 / 0.96
    of its time in fp32, 0.96 / 0.95 in bf16; patnet_t0 at 224 px 0.96 / 0.96; patnet_t2 0.985 (two threads)."""

    def __init__(self) -> None:
        super().__init__()
        self._choices: Dict[Hashable, object] = {}

    def _apply(self, fn, recurse=True):
        self._choices.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._choices.clear()
        super()._load_from_state_dict(*args, **kwargs)

    @torch.jit.unused
    def _chosen(self, step: Hashable, x: Tensor, rule: Callable[[], Kept]) -> Kept:
        """``rule()``, the choice for ``step`` on input ``x``; in eager inference, remembered for inputs like
        ``x`` (the most recent shapes, :data:`~patnet.layers.rel_pos.SHAPES_KEPT` for up to four steps)."""
        if _asks_every_call():
            return rule()
        key = (step, x.shape, x.stride(), x.dtype, x.is_cpu, x.is_cuda)  # the rules tell devices apart by these
        choice = self._choices.get(key)
        if choice is None:
            choice = remember(self._choices, key, rule(), limit=4 * SHAPES_KEPT)
        return choice


def _convs_when_compiled(x: Tensor, matrix: Tensor) -> bool:
    """Whether ``torch.compile`` is tracing an fp32 product of ``x``'s rows with an ``(in, out)`` ``matrix`` of at
    least :data:`~patnet.layers.onednn.MIN_MACS` multiply-adds on a CPU whose MKL GEMM is slow
    (:func:`~patnet.runtimes.hardware.mkl_gemm_is_slow`): it then takes the export's 1x1 conv form, which inductor
    runs as a oneDNN conv instead of MKL's packed GEMM. Regime matrix on an AMD EPYC before and after
    (docs/bench/epyc), compiled fp32, one / two threads, against FasterNet: T2 1.17 / 1.37 -> 0.70 / 0.85, S
    1.32 / 1.53 -> 0.70 / 0.76, T0 1.22 / 1.15 -> 0.97 / 1.06. Smaller products keep MKL: with every product as a
    conv, oneDNN's per-call cost took the 64 px model's tiny maps from 0.91 / 0.92 to 1.09 / 1.15 of FasterNet-T0.
    Eager calls stop at the first two checks."""
    if torch.jit.is_scripting():
        return False
    if not (FP32_TAKES_ONEDNN and _compiling()):
        return False
    macs = x.shape[0] * x.shape[2] * x.shape[3] * matrix.shape[0] * matrix.shape[1]
    return x.dtype == torch.float32 and macs >= MIN_MACS


MAX_KERNEL_TOKENS = 1024  # PAT_sf's attention in C++ up to a 32x32 map (there 11.4 against SDPA's 17.8 ms), SDPA beyond

CUDA_PRODUCTS_AS_CONVS = True  # see _convs_on_cuda; scripts/ab_onednn.py --device cuda toggles it for its A/B


def _convs_on_cuda(x: Tensor) -> bool:
    """Whether the MLP's fp32 products on a CUDA map run as cuDNN 1x1 convs (the training form's and FasterNet's
    op) instead of cuBLAS matrix products: convs follow PyTorch's TF32 default for convolutions (on), which the
    products' matmul default (off) would not. A/B on an H200, eager, batch 256 (docs/bench/gpu.md), the convs'
    time over the products': fp32 0.94 (T0), 0.77 (T2), 0.61 (S); bf16 1.11 to 1.32, so bf16 and autocast keep
    the matrix products."""
    if torch.jit.is_scripting():  # TorchScript keeps the matrix products on every device
        return False
    return (CUDA_PRODUCTS_AS_CONVS and x.is_cuda and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cuda"))


def _exporting() -> bool:
    """Whether an ONNX export is tracing this call (never under TorchScript). The tracing check comes first:
    it is 20x cheaper than asking the exporter, which costs 3 us per call."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()


def _summed_products(a: Tensor, b: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """``(a * b).sum(dim)`` in fp32: the form of a small contraction under ``torch.compile``, where inductor
    fuses it into one kernel with its neighbours; as a matrix product or conv it is a library call that costs
    more than its arithmetic when one side is a single sample's vector or a single output channel. ``b`` (a
    frozen weight) is promoted inside the kernel, not converted first: freezing would fold that conversion
    into an fp32 copy of a bf16 constant, twice the bytes to read on every call."""
    return (a.float() * b).sum(dim=dim, keepdim=keepdim)


def _as_matrix(layer: nn.Module) -> Tuple[nn.Parameter, nn.Parameter]:
    """A linear layer's or 1x1 conv's weight as a frozen ``(in, out)`` matrix, and its bias: the layout in
    which ``torch.addmm`` multiplies rows fastest on CPU (on a Xeon, one thread, fp32, a 512 -> 1024 map of
    49 rows took 390 us so, 505 us as ``F.linear`` on the ``(out, in)`` weight and 530 us as oneDNN's 1x1 conv)."""
    weight = layer.weight.detach().flatten(1).t().contiguous()
    return nn.Parameter(weight, requires_grad=False), nn.Parameter(layer.bias.detach().clone(), requires_grad=False)


def _as_rows(x: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` map as its ``(B*H*W, C)`` rows: a free view of a channels-last map."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0] * x.shape[2] * x.shape[3], x.shape[1])


def _as_conv_weight(matrix: Tensor) -> Tensor:
    """An ``(in, out)`` matrix as a 1x1 conv's ``(out, in, 1, 1)`` weight (a view; the ONNX export folds it)."""
    return matrix.t()[:, :, None, None]


def _gate_scale(stats: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``hsig([mean, std] W + b)`` for an ``(in, out)`` ``W``: ``(B, out)``."""
    return F.hardsigmoid(torch.addmm(bias, stats, weight))


class FusedChannelGate(nn.Module):
    """PAT_ch's gate with its BN folded: ``hsig([mean, std] W + b)``, one small matmul.

    Holds only the gated channels' outputs: ``weight`` is the ``(2C, C - passed)`` matrix over all ``C``
    channels' ``[mean, std]`` (the first ``passed`` channels', PAT_ch's convolved ones, with zero rows), ``bias``
    their ``C - passed`` values. PyTorch (eager, compiled, TorchScript) asks for that scale
    (:meth:`untouched_scale`); exports take the scale of the whole map (:meth:`forward`), whose passed channels
    get zero columns and a bias of 3, so exactly ``hsig(3) = 1``. Kept sliced and in ``(in, out)`` layout,
    eager calls run no slicing or transposing. A/B on a Xeon (docs/bench/change-ab.md, against slicing and
    transposing the whole ``(C, 2C)`` matrix per call), one / two threads: patnet_t0 at 64 px 0.960 / 0.977,
    at 224 px 0.968 / 0.971, patnet_t2 0.989 / 0.984. The exported graph is unchanged.
    """

    def __init__(self, weight: Tensor, bias: Tensor, passed: int = 0):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.passed = passed

    def whole(self, std_factor: float = 1.0) -> Tuple[Tensor, Tensor]:
        """``(W, b)`` over all ``C`` channels: ``(2C, C)`` and ``(C,)``, the passed channels' scale exactly 1;
        the std rows multiplied by ``std_factor``."""
        channels = self.weight.shape[0] // 2
        zeros = self.weight.new_zeros(self.weight.shape[0], self.passed)
        threes = self.bias.new_full((self.passed,), 3.0)  # hsig(3) == 1
        weight = torch.cat((self.weight[:channels], self.weight[channels:] * std_factor))
        return torch.cat((zeros, weight), dim=1), torch.cat((threes, self.bias))

    def forward(self, x: Tensor) -> Tensor:
        """The scale of every channel, ``(B, C, 1, 1)``: the exported graph's form. The statistics take the biased
        std, whose ``sqrt(n / (n - 1))`` the weight's std rows carry (a constant of the traced map size), and the
        scale is reshaped once: two nodes fewer a gate than the unbiased std's multiply and two unsqueezes. Per
        node, not per element, is what a small map costs: one process on an AMD EPYC Zen 5, one / two threads,
        time with / without, patnet_t0 at 64 px ONNX Runtime 0.95 / 0.94, OpenVINO 0.96-1.00; at 224 px ONNX
        Runtime 0.98 / 0.97, OpenVINO 0.99-1.01 (docs/bench/change-ab.md)."""
        count = x.shape[2] * x.shape[3]
        weight, bias = self.whole(math.sqrt(bessel_factor(count)))
        return _gate_scale(mean_biased_std(x), weight, bias).reshape(-1, weight.shape[1], 1, 1)

    def untouched_scale(self, x: Tensor) -> Tensor:
        """The scale of the gated channels only, ``(B, C - passed, 1, 1)``; under ``torch.compile`` without the
        passed channels' statistics and rows."""
        if _compiling():
            stats = compiled_mean_std(x[:, self.passed:])
            return F.hardsigmoid(self._products_summed(stats)).to(x.dtype)[:, :, None, None]
        scale = _gate_scale(stacked_mean_std(x), self.weight, self.bias)
        return scale.view(scale.shape[0], scale.shape[1], 1, 1)  # one view op, not two unsqueezes

    def _products_summed(self, stats: Tensor) -> Tensor:
        """``[mean, std] W + b`` over the gated channels as a multiply-and-sum (:func:`_summed_products`); the
        frozen weight slices become one constant. A/B on a Xeon, compiled patnet_t2 bf16 0.80 -> 0.77 of
        FasterNet-T2, T0 0.98 -> 0.93 (against a one-row matrix product); fp32 T0 at 64 px 0.79 -> 0.77.
        The constant is ``W`` transposed, so each output sums along contiguous memory (an inner reduction,
        which inductor vectorises), and stays bf16 in a bf16 model: compiled bf16 patnet_t2's gate kernels on
        its 14x14 maps went from 62 to 21 us; whole models, one / two threads (docs/bench/change-ab.md),
        patnet_t2 0.961 / 0.982 of before, T0 0.991 / 0.983, S 0.987 (one thread), fp32 T0 0.996 / 0.994."""
        matrix = self.untouched_matrix()
        return _summed_products(stats[:, None, :], matrix.t().contiguous(), dim=2) + self.bias.float()

    def untouched_matrix(self) -> Tensor:
        """``W``'s rows for the gated channels' ``[mean, std]`` (no passed channel's zero rows):
        ``(2(C - passed), C - passed)``."""
        channels = self.weight.shape[0] // 2
        return torch.cat((self.weight[self.passed:channels], self.weight[channels + self.passed:]), dim=0)


KernelPath = Tuple[bool, bool]  # (the C++ kernel fits, oneDNN takes it): _conv_path, FusedPartialSelfAttn._product


def _conv_path(x: Tensor, conv: nn.Conv2d) -> KernelPath:
    """Where ``conv(x)`` may run: the C++ kernel (:func:`_conv_fits_kernel`), oneDNN with a packed weight
    (:func:`~patnet.layers.onednn.takes_onednn_conv`), else ATen."""
    return _conv_fits_kernel(x, conv), takes_onednn_conv(x, conv)


def _conv_fits_kernel(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv(x)`` may run as ``torch.ops.patnet.partial_conv3x3`` (:mod:`~patnet.layers.cpu_kernels`):
    a CPU with AVX512-BF16 and no AMX (``cpu_kernels.BF16_DOT_CPU``), bfloat16 inference by
    :func:`_kernel_takes`'s rule, eager or compiled, channels innermost in ``x``, and the partial mixers' conv:
    3x3, stride 1, zero padding 1, no bias, groups or dilation, an even number of input channels up to
    ``cpu_kernels.MAX_CONV_CHANNELS``."""
    if not cpu_kernels.BF16_DOT_CPU or x.dtype != torch.bfloat16 or x.stride(1) != 1:
        return False
    geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    if geometry != ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros") or conv.bias is not None:
        return False
    if conv.in_channels % 2 or conv.in_channels > cpu_kernels.MAX_CONV_CHANNELS:
        return False
    return _kernel_takes((x, conv.weight))


def _kernels_on() -> bool:
    """Whether the C++ kernels are built and enabled: asked every eager call, once while a graph is compiled."""
    return cpu_kernels.available_when_compiled() if _compiling() else cpu_kernels.available()


def _linear_fits_kernel(rows: Tensor, matrix: Tensor, bias: Tensor) -> bool:
    """Whether ``rows @ matrix + bias`` may run as ``torch.ops.patnet.bf16_linear`` (:mod:`~patnet.layers.cpu_kernels`):
    a CPU with AVX512-BF16 and no AMX, bfloat16 inference by :func:`_kernel_takes`'s rule, eager or compiled, rows
    with unit column stride and an even depth, whatever the product's size. With its weights in panels of 64 outputs
    the kernel took every product of patnet_t1, t2 and s from oneDNN at a gain: compiled bf16 t2 0.95 / 0.91 of its
    time with products over 2^23 multiply-adds left to oneDNN (one / two threads), s 0.98 / 0.92-0.96, eager bf16 t2
    0.92 / 0.90 (docs/bench/change-ab.md, ``products-threshold``)."""
    if not cpu_kernels.BF16_DOT_CPU or rows.dtype != torch.bfloat16 or rows.stride(1) != 1 or matrix.shape[0] % 2:
        return False
    return _kernel_takes((rows, matrix, bias))


def _kernel_activation(act: nn.Module) -> Optional[str]:
    """``bf16_linear``'s name for ``act`` (ReLU, GELU with either approximation), None for any other module."""
    fused = post_op(act)
    if fused is None:
        return None
    name, algorithm = fused
    return "gelu_tanh" if algorithm == "tanh" else name


def _pairs_product(rows: Tensor, matrix: Tensor, bias: Tensor, cache: "cpu_kernels.PackedPairs",
                   activation: str = "none", residual: Optional[Tensor] = None) -> Tensor:
    """``activation(rows @ matrix + bias) [+ residual]`` as one ``bf16_linear`` call, the weight packed by
    :func:`_packed`. oneDNN's linear spends
    about 12 us a call beside its arithmetic; alone, one / two threads, this call takes 0.51-1.04 / 0.44-0.84 of its
    time on patnet_t0's products and 0.29-0.38 / 0.28-0.34 on the 64 px model's (docs/bench/bf16_dot_alone.py);
    whole models, compiled bf16: t0 0.95 / 0.87 of their time, the 64 px model 0.66 / 0.81 (docs/bench/change-ab.md,
    ``bf16-dot-linear``)."""
    packed = _packed(matrix, cache, cpu_kernels.pack_pairs)
    return torch.ops.patnet.bf16_linear(rows, packed, bias, matrix.shape[1], activation, residual)


def _packed(weight: Tensor, cache: "cpu_kernels.PackedPairs", pack: Callable[[Tensor], Tensor]) -> Tensor:
    """``pack(weight)`` for the AVX512-BF16 kernels: kept in ``cache`` in eager inference; a compiled graph packs it
    in the graph, which freezing makes a constant."""
    return pack(weight) if _compiling() else cache.packed(weight, pack)


class _PartialMixer(_RemembersChoices):
    """What the deployed partial mixers share: the split widths and the 3x3 conv on the first ``conv_dim``
    channels, which bfloat16 inference runs as one C++ call where :func:`_conv_fits_kernel` says so, and eager
    inference otherwise in oneDNN with a packed weight where :func:`~patnet.layers.onednn.takes_onednn_conv` says
    so. oneDNN's conv costs 12-18 us a call beside its arithmetic; alone, one / two threads, the C++ call takes
    0.65-0.82 / 0.51-0.65 of its time on patnet_t2's maps (56x56x16 to 7x7x128), 0.37-0.75 / 0.28-0.51 on
    patnet_t0's and 0.14-0.20 / 0.13-0.21 on the 64 px model's (docs/bench/bf16_dot_alone.py); whole models, compiled
    bf16: t0 0.92 / 0.89 of their time, t1 0.93, t2 0.96-0.97, the 64 px model 0.75 / 0.71 (docs/bench/change-ab.md,
    ``bf16-dot-conv``)."""

    __jit_ignored_attributes__ = ["_conv_packed", "_kernel_packed", "_choices"]

    def __init__(self, conv: nn.Conv2d, untouched_dim: int):
        super().__init__()
        self.conv_dim, self.untouched_dim = conv.out_channels, untouched_dim
        self.conv = conv
        self._conv_packed = PackedConv()
        self._kernel_packed = cpu_kernels.PackedPairs()

    def partial_conv(self, convolved: Tensor, path: Optional[KernelPath] = None) -> Tensor:
        """``conv(convolved)`` by :func:`_conv_path` (``path``: the caller has asked it); whether the kernels are
        on is asked every call."""
        if not torch.jit.is_scripting():
            in_kernel, in_onednn = self._conv_path(convolved) if path is None else path
            if in_kernel and _kernels_on():
                return self._kernel_conv(convolved)
            if in_onednn:
                return self._packed_conv(convolved)
        return self.conv(convolved)

    @torch.jit.unused
    def _conv_path(self, convolved: Tensor) -> KernelPath:
        return self._chosen("conv", convolved, lambda: _conv_path(convolved, self.conv))

    @torch.jit.unused
    def _packed_conv(self, convolved: Tensor) -> Tensor:
        return self._conv_packed.conv(convolved, self.conv)

    @torch.jit.unused
    def _kernel_conv(self, convolved: Tensor) -> Tensor:
        """The C++ conv, the weight packed by :func:`_packed`."""
        packed = _packed(self.conv.weight, self._kernel_packed, cpu_kernels.pack_for_partial_conv)
        return torch.ops.patnet.partial_conv3x3(convolved, packed, self.conv_dim)


class FusedPartialChannelAttn(_PartialMixer):
    """PAT_ch without its post-gate BN (folded into the next 1x1 conv): ``[conv3x3(Xp), Xu * g]``.

    The exported graph scales the whole map before the split, as PConv of the gated map
    ``PConv(X * [1, g])``: every consumer of the split stays on one layout (in OpenVINO a split feeding both
    a conv and a reduction cost as much as all the 1x1 convs). PyTorch scales only ``Xu``, as it is copied
    into the output (no pass that writes the gated map); A/B on an AMD EPYC, one thread, against before:
    compiled bf16 patnet_t0 0.94 of before with one-pass statistics (:func:`compiled_mean_std`). Eager CPU
    inference makes that one C++ call (:mod:`~patnet.layers.cpu_kernels`) instead of about ten operators: on an
    AMD EPYC Zen 5, one process, one / two threads, 0.91 / 0.87 of before for the 64 px model in fp32, patnet_t0
    0.94 / 0.91, patnet_t2 0.96 / 0.94, bf16 0.84-0.93 (docs/bench/change-ab.md, ``cpp-gate``).
    """

    def __init__(self, conv: nn.Conv2d, gate: FusedChannelGate, untouched_dim: int):
        super().__init__(conv, untouched_dim)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        sizes = [self.conv_dim, self.untouched_dim]
        if _exporting():
            convolved, untouched = (x * self.gate(x)).split_with_sizes(sizes, 1)
            return torch.cat((self.conv(convolved), untouched), dim=1)
        convolved, untouched = x.split_with_sizes(sizes, 1)  # 1.2 us; torch.split 2.9
        if not torch.jit.is_scripting():
            conv_path, kernel_fits = self._plan(x)
            mixed = self.partial_conv(convolved, conv_path)
            if kernel_fits and _kernels_on():
                return self._gated_concat(x, mixed)
        else:
            mixed = self.conv(convolved)
        return torch.cat((mixed, untouched * self.gate.untouched_scale(x)), dim=1)

    @torch.jit.unused
    def _plan(self, x: Tensor) -> Tuple[KernelPath, bool]:
        """Where the 3x3 conv runs (:func:`_conv_path`), and whether the gate and concatenation fit the C++ call,
        for input ``x`` (remembered, :class:`_RemembersChoices`); whether the kernels are on is asked every call."""
        return self._chosen("plan", x, lambda: (_conv_path(x[:, :self.conv_dim], self.conv), self._kernel_fits(x)))

    @torch.jit.unused
    def _kernel_fits(self, x: Tensor) -> bool:
        """Whether this call may run the gate and concatenation as one C++ call
        (:mod:`~patnet.layers.cpu_kernels`): CPU inference, eager or compiled, on a channels-last float32 or
        bfloat16 map, one dtype throughout (no autocast: the conv's output then has its weight's), nothing that needs
        a gradient. ``docs/bench/change-ab.md`` (``cpp-gate``; compiled: ``compiled-cpp-gate``, within the spread
        of inductor's own gate kernels, one path for both)."""
        tensors = (x, self.conv.weight, self.gate.weight, self.gate.bias)
        return _kernel_takes(tensors) and x.is_contiguous(memory_format=torch.channels_last)

    @torch.jit.unused
    def _gated_concat(self, x: Tensor, mixed: Tensor) -> Tensor:
        """``[mixed, Xu * g]`` by ``torch.ops.patnet.gated_concat`` (``csrc/gated_concat.cpp``)."""
        mixed = mixed.contiguous(memory_format=torch.channels_last)
        return torch.ops.patnet.gated_concat(x, mixed, self.gate.weight, self.gate.bias)


class FusedPartialSelfAttn(_PartialMixer):
    """PAT_sf with the LayerNorm affine and ``head_dim ** -0.5`` folded into ``qkv``.

    The relative-position bias is gathered once per map shape and kept; TorchScript recomputes it.
    """

    __jit_ignored_attributes__ = ["_bias_cache", "_qkv_packed", "_proj_packed", "_qkv_pairs", "_proj_pairs",
                                  "_conv_packed", "_kernel_packed", "_choices"]

    def __init__(self, conv: nn.Conv2d, qkv: nn.Linear, proj: nn.Linear, untouched_dim: int, num_heads: int,
                 eps: float, rel_pos: nn.Module):
        super().__init__(conv, untouched_dim)
        self.num_heads = num_heads
        self.head_dim = untouched_dim // num_heads
        self.eps = eps
        self.qkv_weight, self.qkv_bias = _as_matrix(qkv)
        self.proj_weight, self.proj_bias = _as_matrix(proj)
        self.rel_pos = rel_pos
        self._bias_cache: Dict[Tuple[int, int, str, str], Tensor] = {}
        self._qkv_packed, self._proj_packed = PackedMatrix(), PackedMatrix()
        self._qkv_pairs, self._proj_pairs = cpu_kernels.PackedPairs(), cpu_kernels.PackedPairs()

    def attention_bias(self, height: int, width: int) -> Tensor:
        if torch.jit.is_scripting():
            return self.rel_pos(height, width)
        return self._cached_bias(height, width)

    @torch.jit.unused
    def _cached_bias(self, height: int, width: int) -> Tensor:
        height, width = int(height), int(width)  # under tracing: a constant of the traced map size
        table = self.rel_pos.bias_table
        key = (height, width, str(table.device), str(table.dtype))
        bias = self._bias_cache.get(key)
        if bias is None:
            with torch.no_grad():
                bias = self.rel_pos(height, width).contiguous()
        return remember(self._bias_cache, key, bias)

    def forward(self, x: Tensor) -> Tensor:
        convolved, untouched = x.split_with_sizes([self.conv_dim, self.untouched_dim], 1)
        if self._channels_first(untouched):
            attended = self._attend_channels_first(untouched)
        else:
            attended = self._attend_tokens(untouched)
        return torch.cat((self.partial_conv(convolved), attended), dim=1)

    def _channels_first(self, untouched: Tensor) -> bool:
        """Whether attention takes the exported graph's channels-first form: in exports, and compiled fp32 where
        MKL is slow (:func:`_convs_when_compiled`)."""
        if torch.jit.is_scripting():
            return False
        return self._chosen_channels_first(untouched)

    @torch.jit.unused
    def _chosen_channels_first(self, untouched: Tensor) -> bool:
        return self._chosen("channels first", untouched,
                            lambda: _exporting() or _convs_when_compiled(untouched, self.qkv_weight))

    @torch.jit.unused
    def _product_path(self, rows: Tensor, matrix: Tensor, bias: Tensor) -> KernelPath:
        """:func:`_linear_fits_kernel` and :func:`~patnet.layers.onednn.takes_onednn` for ``qkv`` or ``proj`` (told
        apart by the matrix's id)."""
        return self._chosen(id(matrix), rows, lambda: (_linear_fits_kernel(rows, matrix, bias),
                                                        takes_onednn(rows, matrix)))

    def _attend_tokens(self, untouched: Tensor) -> Tensor:
        """PyTorch's form: ``(B, H*W, Cu)`` tokens (a free view of a channels-last map), then the attention of
        :meth:`_attention_rows`."""
        batch, _, height, width = untouched.shape
        length = height * width
        tokens = F.layer_norm(untouched.flatten(2).transpose(1, 2), (self.untouched_dim,), eps=self.eps)
        qkv = self._product(tokens.reshape(batch * length, self.untouched_dim), self.qkv_weight, self.qkv_bias)
        in_kernel = False if torch.jit.is_scripting() else self._attention_in_kernel(untouched)
        out = self._product(self._attention_rows(qkv, batch, height, width, in_kernel), self.proj_weight,
                            self.proj_bias)
        return out.view(batch, length, self.untouched_dim).transpose(1, 2).reshape(
            batch, self.untouched_dim, height, width)

    def _attention_rows(self, qkv: Tensor, batch: int, height: int, width: int, in_kernel: bool) -> Tensor:
        """The heads' outputs as ``(B*H*W, Cu)`` rows for the ``(B*H*W, 3 Cu)`` qkv rows: one C++ call
        (``in_kernel``: :meth:`_attention_in_kernel`), else fused SDPA on the heads' views. SDPA's CPU kernel is
        built for long sequences; at 49 tokens, 4 heads of 96, the C++ call takes 35 against 66 us (fp32, one
        thread; bf16 36 against 78). A/B in one process on an AMD EPYC Zen 5 (docs/bench/change-ab.md,
        ``small-attn``), the model's time with / without: compiled bf16 patnet_t2 0.97 (one and two threads), S
        0.98-0.99, T0 and T1 0.97-0.98; eager fp32 patnet_t2 0.97, the 64 px model 0.95 / 0.97; eager bf16 0.96."""
        bias = self.attention_bias(height, width)
        if not torch.jit.is_scripting():
            if in_kernel:
                return self._small_attention(qkv, bias)
        length = height * width
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return out.transpose(1, 2).reshape(batch * length, self.untouched_dim)

    @torch.jit.unused
    def _attention_in_kernel(self, untouched: Tensor) -> bool:
        """:meth:`_attention_fits` (remembered) and the kernels built and enabled (asked every call; in a compiled
        graph once, when it is traced)."""
        return self._chosen("attention", untouched, lambda: self._attention_fits(untouched)) and _kernels_on()

    @torch.jit.unused
    def _attention_fits(self, untouched: Tensor) -> bool:
        """Whether the attention runs as ``torch.ops.patnet.small_attention`` (:mod:`~patnet.layers.cpu_kernels`):
        inference on CPU, eager or compiled, in one dtype (float32 or bfloat16, no autocast), up to
        :data:`MAX_KERNEL_TOKENS` tokens; not while traced (a traced graph would need the library)."""
        if untouched.shape[2] * untouched.shape[3] > MAX_KERNEL_TOKENS:
            return False
        return _kernel_takes((untouched, self.qkv_weight, self.rel_pos.bias_table))

    @torch.jit.unused
    def _small_attention(self, qkv: Tensor, bias: Tensor) -> Tensor:
        return torch.ops.patnet.small_attention(qkv, bias, self.num_heads)  # the kept bias is contiguous

    def _product(self, rows: Tensor, matrix: Tensor, bias: Tensor) -> Tensor:
        """``rows @ matrix + bias``: one ``bf16_linear`` call (:func:`_pairs_product`), a prepacked oneDNN linear
        (:mod:`patnet.layers.onednn`) or ``torch.addmm``, by :meth:`_product_path`; whether the kernels are on is
        asked every call."""
        if not torch.jit.is_scripting():
            in_kernel, in_onednn = self._product_path(rows, matrix, bias)
            if in_kernel and _kernels_on():
                return self._kernel_product(rows, matrix, bias)
            if in_onednn:
                return self._packed_product(rows, matrix, bias)
        return torch.addmm(bias, rows, matrix)

    @torch.jit.unused
    def _packed_product(self, rows: Tensor, matrix: Tensor, bias: Tensor) -> Tensor:
        packed = self._qkv_packed if matrix is self.qkv_weight else self._proj_packed
        return packed.product(rows, matrix, bias)

    @torch.jit.unused
    def _kernel_product(self, rows: Tensor, matrix: Tensor, bias: Tensor) -> Tensor:
        return _pairs_product(rows, matrix, bias, self._qkv_pairs if matrix is self.qkv_weight else self._proj_pairs)

    def _attend_channels_first(self, untouched: Tensor) -> Tensor:
        """The exported graph's form: the map stays ``(B, Cu, H, W)``; ``qkv`` and ``proj`` as 1x1 convs, heads as
        ``(B, heads, head_dim, H*W)`` with transposed matmul operands. No layout change, so graph runtimes keep
        their blocked layouts (OpenVINO bf16: patnet_t2 0.87x FasterNet-T2 with this form, 1.00x with the token
        form). The LayerNorm over channels is ``F.layer_norm`` of the channels-last view: ONNX LayerNormalization
        between two Transposes, which ONNX Runtime runs as one kernel and the openvino runtime reads as one MVN
        over the channel axis (:func:`~patnet.runtimes.ov_passes.layernorms_channels_first`). One process on an
        AMD EPYC Zen 5, time with / without against the decomposed normalisation (seven nodes): ONNX Runtime
        0.94-0.99, OpenVINO 0.99-1.00 (docs/bench/change-ab.md)."""
        normed = F.layer_norm(untouched.permute(0, 2, 3, 1), (self.untouched_dim,), eps=self.eps)
        return self._attend_normed(normed.permute(0, 3, 1, 2))

    def _attend_normed(self, normed: Tensor) -> Tensor:
        """:meth:`_attend_channels_first` after the LayerNorm: attention over a normalised channels-first map."""
        batch, _, height, width = normed.shape
        qkv = F.conv2d(normed, _as_conv_weight(self.qkv_weight), self.qkv_bias)
        q, k, v = qkv.reshape(batch, 3, self.num_heads, self.head_dim, height * width).unbind(1)
        logits = torch.matmul(q.transpose(-1, -2), k) + self.attention_bias(height, width)
        out = torch.matmul(v, logits.softmax(dim=-1).transpose(-1, -2))
        return F.conv2d(out.reshape(batch, self.untouched_dim, height, width), _as_conv_weight(self.proj_weight),
                        self.proj_bias)


class FusedSpatialGate(nn.Module):
    """PAT_sp's attention half only (its conv half is folded into the MLP's second conv),
    ``[BN(A * s), B]`` with ``s = hsig(conv1x1(A))``, computed on the whole map without a split:
    ``X * (s * k + p) + t`` where ``conv1x1`` has zero weights on B, ``k`` and ``t`` are the BN's scale and
    shift on A and 0 on B, and ``p`` is 0 on A and 1 on B (so B passes exactly)."""

    def __init__(self, gate_weight: Tensor, gated_scale: Tensor, passed: Tensor, shift: Tensor):
        super().__init__()
        self.gate_weight = nn.Parameter(gate_weight, requires_grad=False)
        self.gated_scale = nn.Parameter(gated_scale.view(1, -1, 1, 1), requires_grad=False)
        self.passed = nn.Parameter(passed.view(1, -1, 1, 1), requires_grad=False)
        self.shift = nn.Parameter(shift.view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if _compiling():
            spatial = F.hardsigmoid(self._products_summed(x)).to(x.dtype)
        elif x.is_contiguous(memory_format=torch.channels_last) and not _exporting():
            spatial = F.hardsigmoid(self._rows_product(x))
        else:
            spatial = F.hardsigmoid(F.conv2d(x, self.gate_weight))
        return torch.addcmul(self.shift, x, torch.addcmul(self.passed, spatial, self.gated_scale))

    def _rows_product(self, x: Tensor) -> Tensor:
        """``conv1x1(x)`` to one channel on a channels-last map as one matrix-vector product of its ``(B*H*W, C)``
        rows (a free view). ``F.conv2d`` hands it to oneDNN on two threads, whose per-call cost dominates: on an
        AMD EPYC Zen 5, patnet_t1's maps from 56x56x48 to 14x14x192 took 29-44 us so against 3-12 us here (one
        thread: 3-23 against 2-11 us; bf16 26-36 against 14-25 us)."""
        batch, channels, height, width = x.shape
        return torch.mv(_as_rows(x), self.gate_weight.view(channels)).view(batch, 1, height, width)

    def _products_summed(self, x: Tensor) -> Tensor:
        """``conv1x1(x)`` to one channel as a multiply-and-sum over channels (:func:`_summed_products`). A/B on a
        Xeon (AMX), compiled patnet_t1 bf16, one thread, three runs: 1.05 -> 0.90, 0.89 -> 0.88, 0.92 -> 0.90
        of FasterNet-T1 (fp32 unchanged); in the exported graph it gained nothing in OpenVINO and lost in ONNX
        Runtime, so exports keep the conv."""
        return _summed_products(x, self.gate_weight.view(1, -1, 1, 1), dim=1, keepdim=True)


class FusedMlp(_RemembersChoices):
    """The MLP's deployment form: ``project(act(expand(x)))``, then PAT_sp's gate when present, then the
    block's ``residual`` when given.

    ``expand`` holds the folded BN (and PAT_ch's post-gate BN on its input channels); ``project``
    holds PAT_sp's conv half. Both are kept as ``(in, out)`` matrices (:func:`_as_matrix`).
    """

    __jit_ignored_attributes__ = ["_expand_packed", "_project_packed", "_expand_pairs", "_project_pairs", "_choices"]
    __constants__ = ["spatially_gated", "small_activation"]
    small_activation = 2 ** 14  # elements; see _activated

    def __init__(self, expand: nn.Conv2d, act: nn.Module, project: nn.Conv2d, spatial_gate: nn.Module | None = None):
        super().__init__()
        self.expand_weight, self.expand_bias = _as_matrix(expand)
        self.act = act
        self.project_weight, self.project_bias = _as_matrix(project)
        self.spatial_gate = spatial_gate if spatial_gate is not None else nn.Identity()
        self.spatially_gated = spatial_gate is not None
        self._expand_packed, self._project_packed = PackedMatrix(), PackedMatrix()
        self._expand_pairs, self._project_pairs = cpu_kernels.PackedPairs(), cpu_kernels.PackedPairs()

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """``[residual +] gate(project(act(expand(x))))``. Without PAT_sp's gate the residual joins the last
        product (``torch.compile`` and oneDNN then add it as they write the product: one pass over the map
        fewer); A/B on an AMD EPYC, one thread, against adding it after: compiled bf16 patnet_t0 0.97."""
        if self.spatially_gated:
            mixed = self.spatial_gate(self._products(x, None))
            return mixed if residual is None else residual + mixed
        return self._products(x, residual)

    def _products(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        form = self._form(x)
        if not torch.jit.is_scripting():
            if form == "kernel":
                if _kernels_on():
                    return self._in_kernel(x, residual)
                form = self._rows_form(x)
        if form == "convs":
            return self._as_convs(x, residual)
        if form == "columns":
            return self._on_columns(x, residual)
        return self._on_rows(x, residual, form == "onednn")

    def _form(self, x: Tensor) -> str:
        """How the products run: ``convs`` (exports, compiled fp32 where MKL is slow: :func:`_convs_when_compiled`,
        fp32 on CUDA: :func:`_convs_on_cuda`), else on a channels-last map's rows (``kernel`` where
        :func:`_linear_fits_kernel` says so and the activation is one the kernel has, ``onednn`` where
        :func:`~patnet.layers.onednn.takes_onednn` says so, else ``rows``), else on an NCHW map's ``columns``. Whether
        the kernels are on is asked every call (``kernel`` falls back to the rows' other forms)."""
        if not torch.jit.is_scripting():
            return self._chosen_form(x)
        return "rows" if x.is_contiguous(memory_format=torch.channels_last) else "columns"

    @torch.jit.unused
    def _chosen_form(self, x: Tensor) -> str:
        return self._chosen("form", x, lambda: self._form_rule(x))

    @torch.jit.unused
    def _form_rule(self, x: Tensor) -> str:
        if _exporting() or _convs_when_compiled(x, self.expand_weight) or _convs_on_cuda(x):
            return "convs"
        if not x.is_contiguous(memory_format=torch.channels_last):
            return "columns"
        if _kernel_activation(self.act) is not None and _linear_fits_kernel(_as_rows(x), self.expand_weight,
                                                                            self.expand_bias):
            return "kernel"
        return self._rows_form(x)

    @torch.jit.unused
    def _rows_form(self, x: Tensor) -> str:
        return "onednn" if takes_onednn(_as_rows(x), self.expand_weight) else "rows"

    @torch.jit.unused
    def _in_kernel(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        """Both products on the map's rows as ``bf16_linear`` calls (:func:`_pairs_product`), the activation and the
        residual applied as they are written."""
        batch, channels, height, width = x.shape
        hidden = _pairs_product(_as_rows(x), self.expand_weight, self.expand_bias, self._expand_pairs,
                                _kernel_activation(self.act))
        residual_rows = None if residual is None else _as_rows(residual)
        out = _pairs_product(hidden, self.project_weight, self.project_bias, self._project_pairs, "none", residual_rows)
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2)

    def _on_rows(self, x: Tensor, residual: Optional[Tensor], in_onednn: bool = False) -> Tensor:
        """Both 1x1 convs as matrix products on the ``(B*H*W, C)`` rows a channels-last map already is (a free
        view in and out). Against the previous deploy form (oneDNN's 1x1 convs on one thread, ``F.linear`` on
        two), A/B on a Xeon, fp32: patnet_t2 at 224 from 0.79 to 0.77 of FasterNet-T2 on one thread and 0.80 to
        0.76 on two; the 64 px model's tiny maps from 1.19 to 1.22. The residual joins the output's map view
        (the same adds, two layout calls fewer than as rows): A/B on the Xeon against adding it as rows
        (docs/bench/change-ab.md), one / two threads: patnet_t0 at 64 px 0.994 / 0.992, at 224 px 0.991 / 0.986,
        patnet_t2 0.997 / 0.989 (an earlier run: 0.965-0.996). ``in_onednn``: as prepacked oneDNN linears
        (:meth:`_in_onednn`), which :meth:`_form` decides."""
        batch, channels, height, width = x.shape
        rows = _as_rows(x)
        if not torch.jit.is_scripting():
            if in_onednn:
                residual_rows = None if residual is None else _as_rows(residual)
                out = self._in_onednn(rows, residual_rows)
                return out.view(batch, height, width, channels).permute(0, 3, 1, 2)
        hidden = self._activated(torch.addmm(self.expand_bias, rows, self.expand_weight), batch, height, width)
        out = torch.addmm(self.project_bias, hidden, self.project_weight)
        out = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return out if residual is None else out.add_(residual)

    def _activated(self, hidden: Tensor, batch: int, height: int, width: int) -> Tensor:
        """``act(hidden)`` for ``(B*H*W, C)`` rows. Up to ``small_activation`` elements it runs on the
        channels-last map view the rows are (same memory, same result layout): ATen hands GELU of a contiguous
        tensor to oneDNN, whose fixed cost exceeds ATen's own vectorized kernel on small maps (Xeon, one thread,
        fp32, ``docs/bench/gelu_paths.py``: 4 x 512 rows 7.6 against 2.1 us, 256 x 64 12.4 against 10.3; from
        about 25k elements oneDNN is faster). That covers every MLP of the 64 px model and none at 224 px. A/B,
        eager, the 64 px patnet_t0 (docs/bench/change-ab.md): on the Xeon 0.93 of its time in fp32, 0.97-0.98 in
        bf16; on an AMD EPYC Zen 5 0.94 / 0.95 in fp32 (one / two threads), 0.98 in bf16."""
        if hidden.numel() > self.small_activation:
            return self.act(hidden)
        channels = hidden.shape[1]
        mapped = hidden.view(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.act(mapped).permute(0, 2, 3, 1).reshape(batch * height * width, channels)

    @torch.jit.unused
    def _in_onednn(self, rows: Tensor, residual_rows: Optional[Tensor]) -> Tensor:
        """:meth:`_on_rows`'s products as prepacked oneDNN linears, the activation fused where oneDNN has it
        and the residual added as the last product is written (:mod:`patnet.layers.onednn`)."""
        fused = post_op(self.act)
        hidden = self._expand_packed.product(rows, self.expand_weight, self.expand_bias, fused)
        if fused is None:
            hidden = self.act(hidden)
        if residual_rows is None:
            return self._project_packed.product(hidden, self.project_weight, self.project_bias)
        return self._project_packed.product_plus(hidden, self.project_weight, self.project_bias,
                                                 residual_rows.contiguous())

    def _on_columns(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        """The same products on an NCHW map's ``(B, C, H*W)`` columns (transposed weight operands are free)."""
        batch, channels, height, width = x.shape
        hidden = self.act(torch.matmul(self.expand_weight.t(), x.flatten(2)) + self.expand_bias[:, None])
        out = (torch.matmul(self.project_weight.t(), hidden) + self.project_bias[:, None]).view(x.shape)
        return out if residual is None else residual + out

    def _as_convs(self, x: Tensor, residual: Optional[Tensor]) -> Tensor:
        """The exported graph's form: 1x1 convs (also compiled fp32 where MKL is slow: :func:`_convs_when_compiled`)."""
        hidden = self.act(F.conv2d(x, _as_conv_weight(self.expand_weight), self.expand_bias))
        out = F.conv2d(hidden, _as_conv_weight(self.project_weight), self.project_bias)
        return out if residual is None else residual + out  # Add(x, mlp) as the block had it
