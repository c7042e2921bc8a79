"""Datasets and transforms for training and evaluating classifiers.

``build_dataset`` returns the train or val split of one of ``DATASETS`` with its transform;
``eval_transform`` rebuilds the evaluation transform a checkpoint was trained with.
"""
from __future__ import annotations

from dataclasses import dataclass

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import InvalidValueError
from .datasets import (
    FASHION_MNIST_CLASSES,
    ArrayImageDataset,
    ImageFolderDataset,
    fashion_mnist,
    image_folder_split,
    read_idx,
    synthetic,
    write_idx,
)
from .subsets import write_train_subset
from .transforms import photo_transform, small_image_transform


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: channels, normalisation and the default image size."""
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    photos: bool  # photos get timm's ImageNet transforms, small images pad-crop-flip


DATASETS = {
    # Fashion-MNIST is 28 px; 64 px keeps a 2x2 map in the last stage of a stride-32 backbone.
    "fashion-mnist": DatasetInfo(1, (0.2860,), (0.3530,), 64, photos=False),
    "synthetic": DatasetInfo(1, (0.5,), (0.25,), 32, photos=False),
    "folder": DatasetInfo(3, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 224, photos=True),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise InvalidValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def build_transform(name: str, img_size: int, train: bool, **aug):
    """The transform of dataset ``name`` at ``img_size``; ``aug`` takes ``hflip``, ``auto_augment``, ``no_aug``."""
    info = dataset_info(name)
    make = photo_transform if info.photos else small_image_transform
    return make(img_size, info.mean, info.std, train, **aug)


def build_dataset(name: str, split: str, data_dir: str | None, img_size: int, **aug):
    """Split ``split`` ("train" or "val") of dataset ``name`` with its transform (``aug`` applies to "train")."""
    info = dataset_info(name)
    if name == "fashion-mnist":
        dataset = fashion_mnist(split, data_dir)
    elif name == "synthetic":
        dataset = synthetic(split)
    else:
        if data_dir is None:
            raise InvalidValueError("--dataset folder needs --data-dir DIR with DIR/train/<class>/ and "
                                    "DIR/val/<class>/")
        dataset = image_folder_split(data_dir, split, mode="RGB" if info.in_chans == 3 else "L")
    dataset.transform = build_transform(name, img_size, split == "train", **aug)
    return dataset


__all__ = ["DATASETS", "DatasetInfo", "FASHION_MNIST_CLASSES", "ArrayImageDataset", "ImageFolderDataset",
           "build_dataset", "build_transform", "dataset_info", "fashion_mnist", "image_folder_split",
           "read_idx", "synthetic", "write_idx", "write_train_subset"]
