"""torchvision detectors (Mask R-CNN, Faster R-CNN, RetinaNet) on any timm backbone with torchvision's FPN.

``build_detector(arch, backbone, num_classes, ...)`` returns torchvision's model with its contract unchanged:
a list of ``C x H x W`` images in; a loss dict in training; ``boxes``/``labels``/``scores`` (and ``masks``)
per image in eval. Labels are 1..``num_classes`` (0 is background), the same for all three archs.
The backbone is the timm classifier wrapped by timm's ``FeatureGetterNet`` (its ``forward_intermediates``),
so PATNet and FasterNet (and any timm model with that contract) are built, loaded and folded alike.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Sequence

from timm.models._features import FeatureGetterNet
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import InvalidValueError
from .backbone_weights import load_backbone

ARCHS = ("maskrcnn", "fasterrcnn", "retinanet")
# Feature levels (indices into the backbone's strides 4, 8, 16, 32) as torchvision uses them: the R-CNNs
# take all four (plus a max-pooled P6), RetinaNet strides 8-32 plus P6 and P7.
DEFAULT_LEVELS = {"maskrcnn": (0, 1, 2, 3), "fasterrcnn": (0, 1, 2, 3), "retinanet": (1, 2, 3)}
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per pyramid level, torchvision's COCO defaults
_STAGE = re.compile(r"(?:^|\.)stages[._](\d+)\.")


class TimmFpnBackbone(nn.Module):
    """``FPN(features(x))``: a timm feature extractor and torchvision's feature pyramid (``out_channels`` wide).

    ``frozen_stages = k`` freezes the stem and the first ``k`` stages (-1: nothing); ``norm_eval`` keeps every
    BatchNorm of the backbone in eval mode while training (mmdetection's ``norm_eval``: the statistics are not
    updated, which small detection batches would make noisy).
    """

    def __init__(self, body: nn.Module, channels: Sequence[int], out_channels: int = 256, extra: str = "pool",
                 frozen_stages: int = -1, norm_eval: bool = True):
        super().__init__()
        self.body = body
        extra_block = LastLevelP6P7(out_channels, out_channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        freeze_stages(body, frozen_stages)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(features)))

    def train(self, mode: bool = True) -> "TimmFpnBackbone":
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                frozen = not any(param.requires_grad for param in module.parameters())
                if self.norm_eval or frozen:
                    module.eval()
        return self


def _stage_of(name: str) -> int | None:
    match = _STAGE.search(name)
    return int(match.group(1)) if match else None


def freeze_stages(body: nn.Module, frozen_stages: int) -> None:
    """Stop gradients to the stem (the parameters before the first ``stages.N``) and stages ``0 ..
    frozen_stages - 1``; ``-1`` freezes nothing."""
    if frozen_stages < 0:
        return
    stages = [_stage_of(name) for name, _ in body.named_parameters()]
    first = next((i for i, stage in enumerate(stages) if stage is not None), None)
    count = len(set(stages) - {None})
    if frozen_stages > count:
        raise InvalidValueError(f"frozen_stages={frozen_stages}, but the backbone has {count} stages named "
                                "stages.N (PATNet, FasterNet, ConvNeXt, ...); use a smaller value, 0 (stem) or -1")
    for index, (stage, param) in enumerate(zip(stages, body.parameters())):
        in_stem = stage is None and (first is None or index < first)
        if in_stem or (stage is not None and stage < frozen_stages):
            param.requires_grad_(False)


def make_backbone(backbone: str, levels: Sequence[int], in_chans: int, fpn_channels: int, extra: str,
                  frozen_stages: int, norm_eval: bool, weights: str | None, backbone_kwargs: dict) -> TimmFpnBackbone:
    """The timm classifier ``backbone`` (with ``weights``), cut to feature ``levels``, under an FPN."""
    model = load_backbone(backbone, weights, in_chans, backbone_kwargs)
    stages = len(model.feature_info) if hasattr(model, "feature_info") else 4
    if not levels or any(not 0 <= level < stages for level in levels) or list(levels) != sorted(set(levels)):
        raise InvalidValueError(f"feature levels must be increasing indices in 0..{stages - 1} (strides 4 to 32), "
                                f"got {list(levels)}")
    if not hasattr(model, "forward_intermediates"):
        raise InvalidValueError(f"{backbone} has no forward_intermediates(); choose a timm model that has it "
                                "(PATNet, FasterNet, ConvNeXt, ResNet, ...)")
    body = FeatureGetterNet(model, out_indices=tuple(levels))
    return TimmFpnBackbone(body, body.feature_info.channels(), fpn_channels, extra, frozen_stages, norm_eval)


def _anchors(anchor_sizes: Sequence[int], levels: int, arch: str) -> AnchorGenerator:
    if len(anchor_sizes) != levels:
        raise InvalidValueError(f"anchor_sizes needs one size per pyramid level ({levels}), got {list(anchor_sizes)}")
    if arch == "retinanet":  # torchvision's RetinaNet: 3 scales per level
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in anchor_sizes)
    else:
        sizes = tuple((s,) for s in anchor_sizes)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)


def build_detector(arch: str, backbone: str, num_classes: int, *, in_chans: int = 3,
                   levels: Sequence[int] | None = None, fpn_channels: int = 256, frozen_stages: int = -1,
                   norm_eval: bool = True, anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
                   min_size: int = 800, max_size: int = 1333, image_mean: Sequence[float] | None = None,
                   image_std: Sequence[float] | None = None, backbone_weights: str | None = None,
                   backbone_kwargs: dict | None = None, box_head_dim: int = 1024,
                   mask_head_layers: Sequence[int] = (256, 256, 256, 256), **detector_kwargs) -> nn.Module:
    """torchvision's ``arch`` detector for ``num_classes`` object classes on timm model ``backbone``.

    ``backbone_weights``: a ``patnet train`` checkpoint (run folder, checkpoint folder or its
    ``model.safetensors``) or a state-dict file (e.g. an official PATNet checkpoint). ``box_head_dim`` and
    ``mask_head_layers`` size the R-CNN heads (torchvision's defaults: 1024 and four 256-wide convs).
    ``detector_kwargs`` go to torchvision's constructor (e.g. ``box_detections_per_img``).
    """
    if arch not in ARCHS:
        raise InvalidValueError(f"unknown detector {arch!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise InvalidValueError(f"num_classes must be at least 1 (object classes, background excluded), "
                                f"got {num_classes}")
    if min_size < 32 or max_size < min_size:
        raise InvalidValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    levels = tuple(levels) if levels is not None else DEFAULT_LEVELS[arch]
    extra = "p6p7" if arch == "retinanet" else "pool"
    body = make_backbone(backbone, levels, in_chans, fpn_channels, extra, frozen_stages, norm_eval,
                         backbone_weights, dict(backbone_kwargs or {}))
    pyramid_levels = len(levels) + (2 if extra == "p6p7" else 1)
    if (image_mean is None or image_std is None) and in_chans != 3:
        raise InvalidValueError(f"a {in_chans}-channel detector needs image_mean and image_std (one value per "
                                "channel); the ImageNet defaults are for RGB")
    mean = list(image_mean) if image_mean is not None else [0.485, 0.456, 0.406]
    std = list(image_std) if image_std is not None else [0.229, 0.224, 0.225]
    common = dict(min_size=min_size, max_size=max_size, image_mean=mean, image_std=std, **detector_kwargs)
    anchors = _anchors(anchor_sizes, pyramid_levels, arch)
    if arch == "retinanet":
        return RetinaNet(body, num_classes + 1, anchor_generator=anchors, **common)
    names = [str(i) for i in range(len(levels))]
    box = dict(box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2),
               box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_dim),
               box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1))
    if arch == "fasterrcnn":
        return FasterRCNN(body, None, rpn_anchor_generator=anchors, **box, **common)
    if not mask_head_layers or min(mask_head_layers) < 1:
        raise InvalidValueError(f"mask_head_layers must list positive widths, got {list(mask_head_layers)}")
    mask = dict(mask_roi_pool=MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2),
                mask_head=MaskRCNNHeads(fpn_channels, list(mask_head_layers), dilation=1),
                mask_predictor=MaskRCNNPredictor(mask_head_layers[-1], mask_head_layers[-1], num_classes + 1))
    return MaskRCNN(body, None, rpn_anchor_generator=anchors, **box, **mask, **common)


def deploy_detector(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose backbone is in its deployment form (``patnet.deploy``: BatchNorms
    folded; the FPN and heads have none), for timing and inference."""
    import copy

    from ..deploy import deploy

    deployed = copy.deepcopy(model).eval()
    deployed.backbone.body = deploy(deployed.backbone.body)
    return deployed
