"""Detection scenes composed from small object images, written once as a COCO-format dataset folder.

``fm-scenes`` composes canvases from real Fashion-MNIST items (training canvases from the training
images, validation canvases from the test images); ``synthetic`` from drawn shapes, for tests. Items are
pasted at several scales, later ones occluding earlier ones; each item's box and instance mask come from
its *visible* silhouette. Everything is seeded, so the same parameters give the same files; a folder is
written atomically and reused when its ``scenes.json`` records the same parameters.

Layout (what :class:`patnet.data.coco.CocoDetection` reads): ``D/annotations/instances_<split>.json``
and ``D/<split>/<id>.png``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidValueError
from ..fileio import atomic_directory
from .datasets import FASHION_MNIST_CLASSES, fashion_mnist

SPLITS = ("train", "val")
SHAPE_CLASSES = ["disc", "square", "triangle", "ring"]
MANIFEST = "scenes.json"


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are composed: canvas side, items per canvas, item scale range, canvases per split."""
    canvas: int = 128
    min_items: int = 2
    max_items: int = 4
    min_scale: float = 1.0  # times the 28 px source side
    max_scale: float = 2.5
    train_canvases: int = 4000
    val_canvases: int = 500
    max_cover: float = 0.5  # an item may hide at most this fraction of an earlier item's visible pixels
    threshold: int = 24  # source pixels above this intensity form the silhouette
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise InvalidValueError(f"items per canvas must satisfy 1 <= min <= max, got {self.min_items}, "
                                    f"{self.max_items}")
        if not 0 < self.min_scale <= self.max_scale or 28 * self.max_scale > self.canvas:
            raise InvalidValueError(f"item scales must satisfy 0 < min <= max and 28 * max <= canvas "
                                    f"({self.canvas}), got {self.min_scale}, {self.max_scale}")
        if self.train_canvases < 1 or self.val_canvases < 1:
            raise InvalidValueError("a scene dataset needs at least one canvas per split")


def shape_items(split: str, count: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28x28 drawings of :data:`SHAPE_CLASSES` (uint8, black background) and their labels."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    rows, cols = np.mgrid[0:28, 0:28] - 13.5
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPE_CLASSES), count)
    for image, label in zip(images, labels):
        radius = rng.uniform(8, 13)
        masks = [np.hypot(rows, cols) <= radius,
                 np.maximum(abs(rows), abs(cols)) <= radius * 0.8,
                 (rows >= -radius) & (rows <= radius * 0.8) & (abs(cols) <= (rows + radius) * 0.55),
                 (np.hypot(rows, cols) <= radius) & (np.hypot(rows, cols) >= radius * 0.55)]
        image[masks[label]] = rng.integers(120, 256)
    return images, labels


def _source(dataset: str, split: str, source_dir: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if dataset == "fm-scenes":
        items = fashion_mnist(split, source_dir)
        return items.images, items.labels, FASHION_MNIST_CLASSES
    if dataset == "synthetic":
        images, labels = shape_items(split)
        return images, labels, SHAPE_CLASSES
    raise InvalidValueError(f"unknown scene dataset {dataset!r}; choose fm-scenes or synthetic")


def _place(item_mask: np.ndarray, visible: list[np.ndarray], canvas: int, rng, max_cover: float):
    """A top-left corner where ``item_mask`` hides at most ``max_cover`` of every visible item (None: no room)."""
    size = item_mask.shape[0]
    for _ in range(50):
        top, left = rng.integers(0, canvas - size + 1, size=2)
        hidden_ok = all(
            (mask[top:top + size, left:left + size] & item_mask).sum() <= max_cover * mask.sum() for mask in visible)
        if hidden_ok:
            return top, left
    return None


def compose_canvas(images: np.ndarray, labels: np.ndarray, spec: SceneSpec, rng) -> tuple[np.ndarray, list]:
    """One canvas and its items as ``(label, visible mask)``, later items pasted over earlier ones."""
    canvas = np.zeros((spec.canvas, spec.canvas), dtype=np.uint8)
    items: list[tuple[int, np.ndarray]] = []
    for _ in range(rng.integers(spec.min_items, spec.max_items + 1)):
        index = rng.integers(len(images))
        size = int(round(28 * rng.uniform(spec.min_scale, spec.max_scale)))
        pixels = np.asarray(Image.fromarray(images[index]).resize((size, size), Image.BILINEAR))
        silhouette = pixels > spec.threshold
        corner = _place(silhouette, [mask for _, mask in items], spec.canvas, rng, spec.max_cover)
        if corner is None or not silhouette.any():
            continue
        top, left = corner
        placed = np.zeros_like(canvas, dtype=bool)
        placed[top:top + size, left:left + size] = silhouette
        canvas[placed] = pixels[silhouette]
        items = [(label, mask & ~placed) for label, mask in items] + [(int(labels[index]), placed)]
    return canvas, [(label, mask) for label, mask in items if mask.any()]


def _annotation(mask: np.ndarray, label: int, image_id: int, ann_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()), int(rows.min())
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return dict(id=ann_id, image_id=image_id, category_id=label + 1, iscrowd=0, area=int(mask.sum()),
                bbox=[x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1], segmentation=rle)


def _write_split(root: Path, dataset: str, split: str, spec: SceneSpec, source_dir: str | None) -> None:
    images, labels, class_names = _source(dataset, split, source_dir)
    rng = np.random.default_rng([spec.seed, SPLITS.index(split)])
    count = spec.train_canvases if split == "train" else spec.val_canvases
    (root / split).mkdir()
    coco = dict(images=[], annotations=[],
                categories=[dict(id=k + 1, name=name) for k, name in enumerate(class_names)])
    for image_id in range(1, count + 1):
        canvas, items = compose_canvas(images, labels, spec, rng)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(canvas, mode="L").save(root / split / file_name)
        coco["images"].append(dict(id=image_id, file_name=file_name, height=spec.canvas, width=spec.canvas))
        for label, mask in items:
            coco["annotations"].append(_annotation(mask, label, image_id, len(coco["annotations"]) + 1))
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def write_scenes(dest: str | os.PathLike, dataset: str = "fm-scenes", spec: SceneSpec = SceneSpec(),
                 source_dir: str | None = None) -> Path:
    """The scene dataset ``dataset`` with ``spec`` at ``dest`` (written once; reused when it matches)."""
    spec.validate()
    dest = Path(dest)
    manifest = dict(dataset=dataset, spec=asdict(spec))
    if (dest / MANIFEST).is_file():
        if json.loads((dest / MANIFEST).read_text()) != manifest:
            raise InvalidValueError(f"{dest} holds scenes made with other parameters; remove it or choose another "
                                    "--data-dir")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(dest) as staging:
        for split in SPLITS:
            _write_split(staging, dataset, split, spec, source_dir)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return dest
