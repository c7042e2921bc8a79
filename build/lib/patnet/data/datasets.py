"""Datasets: Fashion-MNIST read from Debian's gzipped IDX files, checked image folders, a synthetic set.

Every dataset yields ``(PIL image, class index)`` and has a ``classes`` list of class names, so one
transform pipeline serves them all.
"""
from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from ..errors import InvalidValueError, MissingFileError
from ..fileio import atomic_path

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLITS = ("train", "val")
# IDX type code 0x08 is unsigned byte, the only type Fashion-MNIST uses.
_IDX_UBYTE = 0x08


def check_split(split: str) -> None:
    """A one-line error unless ``split`` is "train" or "val" (any other name used to mean val silently)."""
    if split not in SPLITS:
        raise InvalidValueError(f"split {split!r} is invalid: choose 'train' or 'val' (Fashion-MNIST's test images "
                                "are its 'val' split)")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes into an array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
        raise InvalidValueError(f"{path} is not an unsigned-byte IDX file; re-install the dataset")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise InvalidValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}; "
                                "re-install the dataset")
    return body.reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (the format :func:`patnet.data.read_idx` reads)."""
    header = bytes([0, 0, _IDX_UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_path(path) as temporary, gzip.open(temporary, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


class ArrayImageDataset(Dataset):
    """Grayscale images held in memory as a ``N x H x W`` uint8 array, with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], transform=None):
        if len(images) != len(labels):
            raise InvalidValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.astype(np.int64)
        self.classes, self.transform = list(classes), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def fashion_mnist(split: str, root: str | os.PathLike | None = None, transform=None) -> ArrayImageDataset:
    """Fashion-MNIST ``split`` ("train": 60k images, "val": the 10k test images) from ``root``."""
    check_split(split)
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    image_file, label_file = (root / name for name in FASHION_MNIST_FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise MissingFileError(
                f"Fashion-MNIST file {path} not found; install it with `sudo apt-get install dataset-fashion-mnist` "
                "or pass --data-dir with a folder holding the four *-ubyte.gz files")
    return ArrayImageDataset(read_idx(image_file), read_idx(label_file), FASHION_MNIST_CLASSES, transform)


def synthetic(split: str, num_classes: int = 4, per_class: int = 32, size: int = 28, seed: int = 0,
              transform=None) -> ArrayImageDataset:
    """A small learnable set: each class is a fixed random blob pattern, samples add shifts and noise.

    The class patterns depend only on ``seed``; the samples of "train" and "val" are drawn independently.
    """
    check_split(split)
    patterns = np.random.default_rng(seed).random((num_classes, size // 4, size // 4))
    patterns = np.kron(patterns, np.ones((4, 4)))[:, :size, :size]
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.empty((len(labels), size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        shifted = np.roll(patterns[label], shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        noisy = 0.7 * shifted + 0.3 * rng.random((size, size))
        images[i] = np.clip(noisy * 255, 0, 255).astype(np.uint8)
    return ArrayImageDataset(images, labels, [f"class_{k}" for k in range(num_classes)], transform)


# What PIL raises for a file it cannot decode (truncated data raises OSError; bad headers SyntaxError/ValueError).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _unreadable_reason(path: str) -> str | None:
    """Why ``path`` cannot be used as an image (empty, not an image, corrupt), or None when it can."""
    if os.path.getsize(path) == 0:
        return "empty file"
    try:
        with Image.open(path) as image:
            image.verify()
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files; unreadable image files are skipped, counted and warned about whenever
    they are found: empty or corrupt ones when the folder is scanned, ones that fail to decode (a truncated
    JPEG passes the scan) when loaded, where the next readable sample takes their place so an epoch never
    stops. ``skipped`` lists ``(path, reason)`` pairs (in this process: data-loader workers keep their own).

    ``classes`` fixes the class list (and order), e.g. the training split's for the validation split.
    """

    def __init__(self, root: str | os.PathLike, transform=None, mode: str = "RGB", classes: list[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError(f"image folder {root} does not exist; expected {root}/<class name>/<image files>")
        found, _ = find_classes(str(root))
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise InvalidValueError(f"{root} has classes the training split lacks: {', '.join(unknown[:5])}; "
                                    "give every split the same class folders")
        self.samples: list[tuple[str, int]] = []
        self.skipped: list[tuple[str, str]] = []
        for index, name in enumerate(self.classes):
            class_dir = root / name
            if not class_dir.is_dir():
                continue
            for path in sorted(str(p) for p in class_dir.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS):
                reason = _unreadable_reason(path)
                if reason is None:
                    self.samples.append((path, index))
                else:
                    self.skipped.append((path, reason))
        if self.skipped:
            examples = "; ".join(f"{p} ({r})" for p, r in self.skipped[:3])
            warnings.warn(f"skipped {len(self.skipped)} unreadable image file(s) in {root}: {examples}",
                          stacklevel=2)
        if not self.samples:
            raise InvalidValueError(f"no readable images ({', '.join(IMG_EXTENSIONS)}) found under "
                                    f"{root}/<class name>/")
        self.transform, self.mode, self.root = transform, mode, root
        self._undecodable: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} is out of range for {len(self.samples)} images")  # ends iteration
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in self._undecodable:
                continue
            try:
                with Image.open(path) as image:
                    image = image.convert(self.mode)
            except _DECODE_ERRORS as exc:
                self._skip_undecodable(path, exc)
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise InvalidValueError(f"none of the {len(self.samples)} images under {self.root} can be decoded; "
                                "check the files")

    def _skip_undecodable(self, path: str, exc: Exception) -> None:
        self._undecodable.add(path)
        self.skipped.append((path, f"{type(exc).__name__}: {exc}"))
        warnings.warn(f"skipped unreadable image {path} ({type(exc).__name__}: {exc}); the next image takes its "
                      f"place ({len(self.skipped)} skipped in {self.root} so far)", stacklevel=2)


def image_folder_split(root: str | os.PathLike, split: str, mode: str = "RGB") -> ImageFolderDataset:
    """Split ``split`` ("train" or "val") of an image-folder dataset at ``root``; the class list (and so the
    class indices) always comes from ``root/train``."""
    check_split(split)
    root = Path(root)
    missing = [name for name in dict.fromkeys(("train", split)) if not (root / name).is_dir()]
    if missing:
        raise MissingFileError(f"{root} lacks the {' and '.join(missing)} folder(s); an image-folder dataset needs "
                               f"{root}/train/<class>/<images> and {root}/val/<class>/<images>")
    classes, _ = find_classes(str(root / "train"))
    return ImageFolderDataset(root / split, mode=mode, classes=classes)
