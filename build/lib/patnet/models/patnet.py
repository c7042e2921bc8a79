"""PATNet: Partial visual ATtention networks.

Paper: "Partial Convolution Meets Visual Attention" - https://arxiv.org/abs/2503.03148
(extended as PartialNet, https://arxiv.org/abs/2502.01303). Authors' code: https://github.com/haiduo/PartialNet

PATNet is FasterNet (https://arxiv.org/abs/2303.03667) whose partial convolution gives the channels it
leaves untouched cheap attention: a channel gate (PAT_ch) in stages 1-3, self-attention with relative
position bias (PAT_sf) in stage 4, and optionally a spatial gate after each MLP (PAT_sp).
The registered variants reproduce the authors' released configurations exactly; every architectural
choice is a keyword argument. Importing this module registers ``patnet_t0 ... patnet_l`` with timm.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    SelectAdaptivePool2d,
    calculate_drop_path_rates,
    get_act_layer,
    get_device_dtype,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._helpers import load_state_dict
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import InvalidTypeError, InvalidValueError, MissingFileError
from ..layers import PartialChannelAttn, PartialConv, PartialSelfAttn, PartialSpatialAttn
from ..layers.folding import conv_with_bias, in_place
from ..layers.fused import FusedMlp

__all__ = ["PATNet", "checkpoint_filter_fn", "read_weights_file"]

MIXERS = ("pconv", "pat_ch", "pat_sf")
POOLS = ("avg", "max", "avgmax", "fast", "")  # "catavgmax" doubles the width conv_head reads: not supported


def _check_int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """``value`` as an int, or a one-line error naming ``name``: an integer (not a bool or 1.7) >= ``minimum``."""
    hint = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name}={value!r} is invalid: expected an integer >= {minimum}{hint}")
    if value < minimum:
        raise InvalidValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}{hint}")
    return int(value)


def _check_real(name: str, value: Any, expected: str, low: float, high: float = math.inf,
                low_open: bool = False) -> None:
    """A one-line error naming ``name`` unless ``value`` is a finite number in ``[low, high)`` (``(low, high)``
    with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name}={value!r} is invalid: expected {expected}")
    if not (math.isfinite(value) and (low < value if low_open else low <= value) and value < high):
        raise InvalidValueError(f"{name}={value!r} is invalid: expected {expected}")


def _check_depths(depths: Any) -> Tuple[int, ...]:
    """Blocks per stage: a list of integers >= 1 (1.7 is refused, not rounded down)."""
    message = f"depths={depths!r} is invalid: expected a list of integers >= 1, one per stage, e.g. (2, 2, 6, 4)"
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Sequence) or len(depths) < 1:
        raise InvalidTypeError(message)
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in depths):
        raise InvalidTypeError(message)
    if min(depths) < 1:
        raise InvalidValueError(message)
    return tuple(int(d) for d in depths)


def _check_mixers(mixers: Any, num_stages: int) -> Tuple[str, ...]:
    """One mixer name per stage; default PAT_ch everywhere but the last stage, which uses PAT_sf."""
    if mixers is None:
        return ("pat_ch",) * (num_stages - 1) + ("pat_sf",)
    message = f"mixers must give one of {MIXERS} for each of the {num_stages} stages, got {mixers!r}"
    if isinstance(mixers, str) or not isinstance(mixers, Sequence):
        raise InvalidTypeError(message)
    if len(mixers) != num_stages or any(m not in MIXERS for m in mixers):
        raise InvalidValueError(message)
    return tuple(mixers)


def _check_head(num_classes: Any, global_pool: Any, feature_dim: Any, num_heads: Any) -> None:
    """The classifier's class count (0: no classifier), a pooling ``conv_head`` can read, and the head widths."""
    _check_int("num_classes", num_classes, 0, "0 builds a feature extractor without a classifier")
    if global_pool not in POOLS:
        raise InvalidValueError(f"global_pool={global_pool!r} is invalid: choose one of {POOLS}")
    if global_pool == "" and num_classes > 0:
        raise InvalidValueError("global_pool='' (no pooling) gives unpooled feature maps, which a classifier cannot "
                                "take; pass num_classes=0 with it, or keep global_pool='avg'")
    _check_int("feature_dim", feature_dim, 1)
    _check_int("num_heads", num_heads, 1)


def _check_widths(in_chans: Any, embed_dim: Any, patch_size: Any, patch_stride: Any, n_div: Any, mlp_ratio: Any,
                  mixers: Tuple[str, ...], spatial_attn: Any) -> int:
    """The stem and channel splits: every part of every stage keeps at least one channel (stage 1 is the
    narrowest). Returns the stem stride (the kernel size when ``patch_stride`` is None)."""
    _check_int("in_chans", in_chans, 1, "the number of image channels, e.g. 3 for RGB")
    _check_int("embed_dim", embed_dim, 1)
    _check_int("patch_size", patch_size, 1)
    patch_stride = patch_size if patch_stride is None else _check_int("patch_stride", patch_stride, 1)
    _check_int("n_div", n_div, 1, "a mixer convolves 1/n_div of the channels, e.g. 4")
    _check_real("mlp_ratio", mlp_ratio, "a positive number, e.g. 2", 0.0, low_open=True)
    if not isinstance(spatial_attn, bool):
        raise InvalidTypeError(f"spatial_attn={spatial_attn!r} is invalid: expected True or False")
    if n_div < 2 and any(m != "pconv" for m in mixers):
        raise InvalidValueError(f"n_div={n_div} leaves no channel for the attention of the "
                                f"{', '.join(sorted(set(mixers) - {'pconv'}))} stages; use n_div >= 2, or mixers of "
                                "'pconv' only")
    if int(embed_dim * mlp_ratio) < 1:
        raise InvalidValueError(f"mlp_ratio={mlp_ratio!r} gives an MLP of no channel at width {embed_dim}; "
                                f"use mlp_ratio >= {1 / embed_dim:g}")
    if spatial_attn and embed_dim < 2:
        raise InvalidValueError(f"spatial_attn=True splits the width in two, but embed_dim={embed_dim}; "
                                "use embed_dim >= 2")
    return patch_stride


class ConvMlp(nn.Sequential):
    """``conv1x1(C -> hC) -> BN -> act -> conv1x1(hC -> C)`` [``-> PAT_sp``].

    A Sequential so that its state-dict keys are the authors' (``mlp.0``, ``mlp.1``, ``mlp.3``, ``mlp.4``).
    """

    def __init__(self, dim: int, mlp_ratio: float, act_layer: Type[nn.Module], spatial_attn: bool, device=None,
                 dtype=None):
        dd = {"device": device, "dtype": dtype}
        hidden_dim = int(dim * mlp_ratio)
        layers: List[nn.Module] = [
            nn.Conv2d(dim, hidden_dim, 1, bias=False, **dd),
            nn.BatchNorm2d(hidden_dim, **dd),
            act_layer(),
            nn.Conv2d(hidden_dim, dim, 1, bias=False, **dd),
        ]
        if spatial_attn:
            layers.append(PartialSpatialAttn(dim, **dd))
        super().__init__(*layers)

    @torch.no_grad()
    def fuse(self, mixer: nn.Module | None = None) -> tuple[FusedMlp, nn.Module | None]:
        """The deployment form: the BN folded into the first conv, PAT_sp's conv half into the second.

        A PAT_ch ``mixer`` in front has its post-gate BN folded into the first conv too; its deployment
        form is returned with the MLP's (``mixer`` itself when it has nothing to fold).
        """
        expand, norm, act, project, *spatial = self
        expand = fuse_conv_bn_eval(expand, norm)
        if isinstance(mixer, PartialChannelAttn):
            mixer = mixer.fuse_into(expand)
        project = conv_with_bias(project)
        gate = spatial[0].fuse_into(project) if spatial else None
        return FusedMlp(expand, in_place(act), project, gate), mixer


class PatBlock(nn.Module):
    """One block: a partial token mixer and a 1x1-conv MLP.

    ``pconv``/``pat_ch``: ``x + DropPath(MLP(mixer(x)))`` (FasterNet's single residual).
    ``pat_sf``: ``x1 = x + mixer(x)``, then ``x1 + DropPath(MLP(x1))``.
    In the deployment form the MLP adds the residual itself (:class:`~patnet.layers.fused.FusedMlp`).
    """

    __constants__ = ["residual_in_mlp"]  # TorchScript compiles only the branch the form takes

    def __init__(self, dim: int, mixer: str = "pat_ch", n_div: int = 4, mlp_ratio: float = 2.0,
                 act_layer: Type[nn.Module] = nn.ReLU, drop_path: float = 0.0, spatial_attn: bool = False,
                 num_heads: int = 4, attn_drop: float = 0.1, proj_drop: float = 0.1, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if mixer == "pconv":
            self.spatial_mixing = PartialConv(dim, n_div, **dd)
        elif mixer == "pat_ch":
            self.spatial_mixing = PartialChannelAttn(dim, n_div, **dd)
        elif mixer == "pat_sf":
            self.spatial_mixing = PartialSelfAttn(dim, n_div, num_heads, attn_drop, proj_drop, **dd)
        else:
            raise InvalidValueError(f"unknown mixer {mixer!r}; choose one of {MIXERS}")
        self.mixer_residual = mixer == "pat_sf"
        self.mlp = ConvMlp(dim, mlp_ratio, act_layer, spatial_attn, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.residual_in_mlp = False

    def forward(self, x: Tensor) -> Tensor:
        if self.mixer_residual:
            x = mixed = x + self.spatial_mixing(x)
        else:
            mixed = self.spatial_mixing(x)
        if self.residual_in_mlp:
            return self.mlp(mixed, x)
        return x + self.drop_path(self.mlp(mixed))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch this block to its deployment form in place (use on a model in eval mode); idempotent."""
        if isinstance(self.mlp, FusedMlp):
            return
        mlp, mixer = self.mlp.fuse(self.spatial_mixing)  # PAT_ch's last BN is affine on the MLP's input
        if isinstance(mixer, PartialSelfAttn):
            mixer = mixer.fuse()
        self.spatial_mixing, self.mlp, self.drop_path = mixer, mlp, nn.Identity()
        self.residual_in_mlp = True


class PatchEmbed(nn.Module):
    """Stem: ``BN(conv(in_chans -> C0, kernel patch_size, stride patch_stride))``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, patch_stride: int = 4, device=None,
                 dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_stride, bias=False, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(embed_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The deployment form: one conv with the BN folded in."""
        return fuse_conv_bn_eval(self.proj, self.norm)


class PatchMerging(nn.Module):
    """Downsampling between stages: ``BN(conv(C -> 2C, kernel 2, stride 2))``."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 2, 2, bias=False, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(out_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The deployment form: one conv with the BN folded in."""
        return fuse_conv_bn_eval(self.reduction, self.norm)


class PatStage(nn.Module):
    """Optional downsampling followed by ``depth`` blocks of one mixer type."""

    def __init__(self, dim: int, depth: int, mixer: str, drop_path: Sequence[float], downsample: bool, **block_kwargs):
        super().__init__()
        dd = {"device": block_kwargs.get("device"), "dtype": block_kwargs.get("dtype")}
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim // 2, dim, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            PatBlock(dim, mixer, drop_path=drop_path[i], **block_kwargs) for i in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _resolve_act_layer(act_layer: Union[str, Type[nn.Module]]) -> Type[nn.Module]:
    """An activation class from a class or a timm name such as "relu" or "gelu"."""
    try:
        resolved = get_act_layer(act_layer) if isinstance(act_layer, str) else act_layer
    except KeyError:
        resolved = None
    if not callable(resolved):
        raise InvalidValueError(f"act_layer={act_layer!r} is not an activation; pass a class such as nn.GELU or a timm "
                                f"name such as 'relu', 'gelu', 'silu'")
    return resolved


class PATNet(nn.Module):
    """PATNet backbone and classifier (timm model contract)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 2, 6, 4),
            mlp_ratio: float = 2.0,
            n_div: int = 4,
            patch_size: int = 4,
            patch_stride: Optional[int] = None,
            feature_dim: int = 1280,
            act_layer: Union[str, Type[nn.Module]] = nn.ReLU,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            spatial_attn: bool = False,
            num_heads: int = 4,
            mixers: Optional[Sequence[str]] = None,
            attn_drop: float = 0.1,
            proj_drop: float = 0.1,
            device=None,
            dtype=None,
    ):
        """
        Args:
            embed_dim: width of stage 1; stage i has ``embed_dim * 2**i`` channels.
            depths: blocks per stage.
            mlp_ratio: MLP hidden width over block width.
            n_div: a mixer convolves ``C // n_div`` channels and attends to the rest.
            patch_size, patch_stride: stem kernel and stride (stride defaults to the kernel size).
            feature_dim: width of the 1x1 conv between pooling and classifier.
            act_layer: activation class or timm name ("relu", "gelu", ...).
            drop_rate: dropout before the classifier. drop_path_rate: final stochastic depth rate.
            spatial_attn: append PAT_sp to every MLP.
            num_heads: heads of PAT_sf.
            mixers: mixer per stage, from ``("pconv", "pat_ch", "pat_sf")``; default PAT_ch everywhere
                but the last stage, which uses PAT_sf.
            attn_drop, proj_drop: PAT_sf's attention and projection dropout (the authors use 0.1).
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        depths = _check_depths(depths)
        num_stages = len(depths)
        mixers = _check_mixers(mixers, num_stages)
        patch_stride = _check_widths(in_chans, embed_dim, patch_size, patch_stride, n_div, mlp_ratio, mixers,
                                     spatial_attn)
        _check_head(num_classes, global_pool, feature_dim, num_heads)
        for name, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate), ("attn_drop", attn_drop),
                           ("proj_drop", proj_drop)):
            _check_real(name, rate, "a rate in [0, 1)", 0.0, 1.0)
        act_layer = _resolve_act_layer(act_layer)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.patch_size, self.patch_stride = patch_size, patch_stride

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, patch_stride, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        block_kwargs = dict(n_div=n_div, mlp_ratio=mlp_ratio, act_layer=act_layer, spatial_attn=spatial_attn,
                            num_heads=num_heads, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            dim = embed_dim * 2 ** i
            stages.append(PatStage(dim, depths[i], mixers[i], dpr[i], downsample=i > 0, **block_kwargs))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_stride * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self._update_min_input_size()

        self.num_features = embed_dim * 2 ** (num_stages - 1)
        self.head_hidden_size = feature_dim
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(self.num_features, feature_dim, 1, bias=False, **dd)
        self.act = act_layer()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(feature_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith("rel_pos.bias_table")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^conv_head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        _check_head(num_classes, self.global_pool.pool_type if global_pool is None else global_pool,
                    self.head_hidden_size, 1)
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        dd = get_device_dtype(self)
        self.classifier = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_weights(self.classifier)

    def _update_min_input_size(self) -> None:
        """Smallest height (or width) the network takes: the last stage must keep one pixel."""
        self.min_input_size = ((1 << (len(self.stages) - 1)) - 1) * self.patch_stride + self.patch_size

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise InvalidValueError(f"expected a 4-D (batch, channels, height, width) tensor, got shape "
                                    f"{list(x.shape)}; add a batch dimension with x.unsqueeze(0)")
        if not x.is_floating_point():
            raise InvalidTypeError(f"expected a floating-point image tensor, got {x.dtype}; convert it, e.g. "
                                   f"x.float() / 255, then normalize")
        if x.shape[1] != self.in_chans:
            raise InvalidValueError(f"expected {self.in_chans} input channels, got {x.shape[1]}; create the model with "
                                    f"in_chans={x.shape[1]} or convert the images")
        smallest = self.min_input_size
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise InvalidValueError(f"input of {x.shape[2]}x{x.shape[3]} is too small: this network needs at "
                                    f"least {smallest}x{smallest}; resize the images or use a smaller "
                                    "patch_size/patch_stride")
        if not torch.jit.is_scripting():
            self._check_dtype(x)

    @torch.jit.unused
    def _check_dtype(self, x: Tensor) -> None:
        """Outside autocast the input must have the weights' dtype (float64 or bfloat16 input to a float32
        model would fail deep inside a convolution)."""
        expected = next(self.parameters()).dtype
        if x.dtype != expected and not torch.is_autocast_enabled(x.device.type):
            raise InvalidTypeError(f"expected a {expected} input (the dtype of the model's weights), got {x.dtype}; "
                                   f"convert it with x.to({expected}), the model with model.to({x.dtype}), or run "
                                   "under torch.autocast")

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Final features and the outputs of the selected stages (``indices``: last n if int, all if None)."""
        if output_fmt != "NCHW":
            raise InvalidValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self.patch_embed(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) not needed for the selected intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        pruned_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        self._update_min_input_size()
        if pruned_end:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or pruned_end:
            self.conv_head = nn.Identity()
            self.act = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.flatten(self.act(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# Authors' layout -> ours. Their `stages` list interleaves stages (even) and merging layers (odd).
_OFFICIAL_RENAMES = (
    (r"^avgpool_pre_head\.1\.", "conv_head."),
    (r"^head\.", "classifier."),
    (r"^stages\.(\d+)\.blocks\.", lambda m: f"stages.{int(m.group(1)) // 2}.blocks."),
    (r"^stages\.(\d+)\.(reduction|norm)\.", lambda m: f"stages.{(int(m.group(1)) + 1) // 2}.downsample.{m.group(2)}."),
    (r"\.spatial_mixing\.partial_conv3\.", ".spatial_mixing.conv."),
    (r"\.spatial_mixing\.attn\.cfc1\.", ".spatial_mixing.gate.conv."),
    (r"\.spatial_mixing\.attn\.bn\.", ".spatial_mixing.gate.norm."),
    (r"\.spatial_mixing\.attn\.rpe_k\.lookup_table_bias$", ".spatial_mixing.attn.rel_pos.bias_table"),
    (r"\.mlp\.4\.conv_attn\.", ".mlp.4.gate_conv."),
    (r"\.mlp\.4\.norm\.", ".mlp.4.gate_norm."),
    (r"\.mlp\.4\.norm2\.", ".mlp.4.pre_norm."),
)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Optional[nn.Module] = None) -> Dict[str, Tensor]:
    """Convert the authors' state dict (plain, or Lightning-wrapped with a ``model.`` prefix) to ours.

    State dicts already in this package's layout pass through unchanged.
    """
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items()}
    if not any(k.startswith(("avgpool_pre_head.", "head.")) or ".partial_conv3." in k for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        if not torch.is_tensor(value):
            continue
        for pattern, replacement in _OFFICIAL_RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "classifier",
        "paper_ids": "arXiv:2503.03148", "paper_name": "Partial Convolution Meets Visual Attention",
        "origin_url": "https://github.com/haiduo/PartialNet", "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "patnet_t0": _cfg(),
    "patnet_t1": _cfg(),
    "patnet_t2": _cfg(),
    "patnet_s": _cfg(),
    "patnet_m": _cfg(),
    "patnet_l": _cfg(),
})


def _load_failure_reason(exc: Exception) -> str:
    """The first sentence of ``exc``'s message on one line, shortened at a word boundary if long."""
    text = " ".join(str(exc).split())
    sentence = text.split(". ")[0].rstrip(".")
    if len(sentence) > 160:
        sentence = sentence[:160].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__


def read_weights_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The state dict in ``path`` (a torch file, read with ``weights_only=True``, or safetensors).

    A missing, corrupt or code-carrying file is a one-line error that names it; nothing in it is executed.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        return load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch, pickle, zipfile and safetensors each raise their own type for a bad file
        root = exc
        while (root.__cause__ or root.__context__) is not None:  # timm and torch wrap the unpickler's own error
            root = root.__cause__ or root.__context__
        if "unsupported global" in str(root).lower():  # the weights-only unpickler refused to import code
            raise InvalidValueError(f"refusing to load {path}: it is not a plain weights file (unpickling it would run "
                                    "code from the file); re-save it as a state dict or as safetensors") from exc
        raise InvalidValueError(f"could not read checkpoint {path} (corrupt or not a weights file: "
                                f"{_load_failure_reason(root)}); pass a state dict saved with torch.save or a "
                                ".safetensors file") from exc


def _read_checkpoint(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Read the local checkpoint named by ``pretrained_cfg_overlay['file']`` safely (weights only).

    Returns the overlay to build with: the state dict passed through, and ``num_classes`` set to the
    checkpoint's own so that timm keeps its classifier when the class counts agree (and drops it, for
    fine-tuning, when they don't).
    """
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    path = overlay.pop("file", None)
    if not path and "state_dict" not in overlay:
        raise InvalidValueError(f"no pretrained weights are hosted for {variant}; pass a local checkpoint with "
                                f"pretrained_cfg_overlay=dict(file=PATH)")
    state_dict = overlay["state_dict"] if "state_dict" in overlay else read_weights_file(path)
    classifier = checkpoint_filter_fn(state_dict, None).get("classifier.weight")
    if classifier is not None and "num_classes" not in overlay:
        overlay["num_classes"] = classifier.shape[0]
    overlay["state_dict"] = state_dict
    return overlay


def _from_model_source(kwargs: Dict[str, Any]) -> bool:
    """Whether timm resolved the weights' location itself (``local-dir:``/``hf-hub:`` model names)."""
    cfg = kwargs.get("pretrained_cfg")
    return isinstance(cfg, dict) and cfg.get("source") in ("local-dir", "hf-hub")


def _feature_indices(kwargs: Dict[str, Any]) -> Tuple[int, ...]:
    """Every stage's index (the default ``out_indices``); with ``features_only``, explicit ``out_indices`` must
    name stages the model has."""
    depths = kwargs.get("depths")
    num_stages = len(depths) if isinstance(depths, Sequence) else 4
    every = tuple(range(num_stages))
    out_indices = kwargs.get("out_indices", every)
    if kwargs.get("features_only"):
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices or any(not isinstance(i, int) or not -num_stages <= i < num_stages for i in indices):
            raise InvalidValueError(f"features_only: out_indices={out_indices!r} names stages this model lacks: "
                                    f"depths={tuple(depths)} gives {num_stages} stage(s); pass out_indices within "
                                    f"{every}")
    return every


def _create_patnet(variant: str, pretrained: bool = False, **kwargs: Any) -> PATNet:
    if pretrained and not _from_model_source(kwargs):
        kwargs["pretrained_cfg_overlay"] = _read_checkpoint(variant, kwargs)
    try:
        return build_model_with_cfg(
            PATNet, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=_feature_indices(kwargs), feature_cls="getter"),
            **kwargs,
        )
    except RuntimeError as exc:
        message = " ".join(str(exc).split())
        if not pretrained or "Error(s) in loading state_dict" not in message:
            raise
        raise InvalidValueError(f"the checkpoint does not fit {variant} with the given arguments: "
                                f"{_load_failure_reason(exc)}; pass the architecture keywords it was trained "
                                "with") from exc


@register_model
def patnet_t0(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=32, depths=(1, 2, 8, 2), act_layer=nn.GELU, drop_path_rate=0.0)
    return _create_patnet("patnet_t0", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_t1(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=48, depths=(1, 2, 8, 2), act_layer=nn.GELU, drop_path_rate=0.02, spatial_attn=True)
    return _create_patnet("patnet_t1", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_t2(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=64, depths=(2, 2, 6, 4), act_layer=nn.ReLU, drop_path_rate=0.05)
    return _create_patnet("patnet_t2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_s(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=96, depths=(2, 2, 9, 4), act_layer=nn.ReLU, drop_path_rate=0.1)
    return _create_patnet("patnet_s", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_m(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=128, depths=(2, 3, 16, 4), act_layer=nn.ReLU, drop_path_rate=0.2)
    return _create_patnet("patnet_m", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def patnet_l(pretrained: bool = False, **kwargs: Any) -> PATNet:
    model_args = dict(embed_dim=160, depths=(2, 3, 20, 4), act_layer=nn.ReLU, drop_path_rate=0.3)
    return _create_patnet("patnet_l", pretrained=pretrained, **dict(model_args, **kwargs))
