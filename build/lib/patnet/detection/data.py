"""A detection run's data: the COCO-format folder (written first for the generated sets) and its two splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.coco import CocoDetection
from ..data.scenes import SceneSpec, write_scenes
from ..errors import InvalidValueError
from .config import DetectConfig

# The synthetic set is for tests: a few tiny canvases of drawn shapes.
SYNTHETIC_SCENES = dict(canvas=64, max_scale=2.0, train_canvases=16, val_canvases=8)


@dataclass
class DetectionSplits:
    train_set: CocoDetection
    val_set: CocoDetection
    root: Path

    @property
    def class_names(self) -> list[str]:
        return self.train_set.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.train_set.category_ids


def data_root(config: DetectConfig) -> Path:
    """The COCO-format folder of the run's dataset, written first when the dataset is generated here."""
    if not config.data.generated:
        return Path(config.data_dir)
    defaults = SYNTHETIC_SCENES if config.dataset == "synthetic" else {}
    spec = SceneSpec(**{**defaults, **config.scenes})
    root = Path(config.data_dir) if config.data_dir else Path("output/data") / f"{config.dataset}-{spec.canvas}px"
    return write_scenes(root, config.dataset, spec)


def build_splits(config: DetectConfig, root: Path | None = None) -> DetectionSplits:
    """Training split (flip augmentation; masks for Mask R-CNN) and validation split of the run's data."""
    root = root or data_root(config)
    train_split, val_split = config.splits
    in_chans = config.data.in_chans
    train_set = CocoDetection(root, train_split, in_chans, masks=config.arch == "maskrcnn", flip=config.hflip)
    val_set = CocoDetection(root, val_split, in_chans, masks=False)
    if val_set.category_ids != train_set.category_ids:
        raise InvalidValueError(f"splits {train_split} and {val_split} of {root} list different categories; "
                                "give both annotation files the same 'categories'")
    return DetectionSplits(train_set, val_set, root)
