"""COCO-format detection data as users have it: ``D/annotations/instances_<split>.json`` and ``D/<split>/``.

Any category ids work (COCO's are 1..90 with gaps): they map to contiguous labels 1..K (0 is background)
and back. Polygon and RLE masks are decoded with pycocotools; ``iscrowd`` regions are left out of the
training targets (COCOeval treats them as ignore regions). What cannot be used is skipped and counted with
one warning: annotations of unknown images or categories, boxes of zero area after clipping to the image,
missing image files. A file that is not COCO JSON is a one-line error.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import InvalidValueError, MissingFileError


def annotation_file(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def load_coco(path: str | os.PathLike):
    """A pycocotools ``COCO`` index of annotation file ``path`` (quietly), or a one-line error."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"annotation file {path} does not exist; a COCO-format folder D holds "
                               "D/annotations/instances_<split>.json and D/<split>/ with the images")
    try:
        dataset = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"{path} is not valid JSON ({exc}); it must be a COCO annotation file") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list) \
            or not isinstance(dataset.get("categories"), list):
        raise InvalidValueError(f"{path} is not a COCO annotation file: it needs 'images' and 'categories' lists")
    dataset.setdefault("annotations", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _warn_skipped(source: Path, skipped: Counter) -> None:
    if skipped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        warnings.warn(f"{source}: skipped {reasons}", stacklevel=3)


class CocoDetection(Dataset):
    """Images as float ``C x H x W`` tensors in [0, 1] with torchvision detection targets (``boxes`` xyxy,
    ``labels`` 1..K, ``masks`` when ``masks=True``, ``image_id``). ``flip`` is the horizontal-flip
    probability (training augmentation)."""

    def __init__(self, root: str | os.PathLike, split: str, in_chans: int = 3, masks: bool = True,
                 flip: float = 0.0):
        self.root, self.split = Path(root), split
        self.image_dir = self.root / split
        self.coco = load_coco(annotation_file(root, split))
        if not self.image_dir.is_dir():
            raise MissingFileError(f"image folder {self.image_dir} does not exist; the images of split {split!r} "
                                   f"belong in {self.image_dir}/")
        self.category_ids = sorted(self.coco.cats)
        if not self.category_ids:
            raise InvalidValueError(f"{annotation_file(root, split)} lists no categories")
        self.label_of = {cat: k + 1 for k, cat in enumerate(self.category_ids)}
        self.class_names = [str(self.coco.cats[cat].get("name", cat)) for cat in self.category_ids]
        self.mode, self.masks, self.flip = ("L" if in_chans == 1 else "RGB"), masks, flip
        self.unreadable = 0
        skipped = Counter()
        self.image_ids = []
        for image_id in sorted(self.coco.imgs):
            if (self.image_dir / self.coco.imgs[image_id]["file_name"]).is_file():
                self.image_ids.append(image_id)
            else:
                skipped["images whose file is missing"] += 1
        known = set(self.coco.imgs)
        skipped["annotations of unknown images"] += sum(a["image_id"] not in known for a in self.coco.anns.values())
        skipped["annotations of unknown categories"] += sum(
            a.get("category_id") not in self.label_of for a in self.coco.anns.values())
        skipped["boxes of zero area inside the image"] += sum(self._box_is_empty(a) for a in self.coco.anns.values())
        self.skipped = +skipped
        _warn_skipped(annotation_file(root, split), self.skipped)
        if not self.image_ids:
            raise InvalidValueError(f"no image of {annotation_file(root, split)} was found in {self.image_dir}")

    def _box_is_empty(self, ann: dict) -> bool:
        """Whether a usable annotation's box has no area once clipped to its image (it is left out of targets)."""
        info = self.coco.imgs.get(ann["image_id"])
        if info is None or ann.get("category_id") not in self.label_of or ann.get("iscrowd", 0):
            return False
        box = clip_box(ann["bbox"], info["height"], info["width"])
        return box[2] <= box[0] or box[3] <= box[1]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _image(self, info: dict) -> torch.Tensor | None:
        """The image as a float tensor, or None (with a warning naming the file) when it cannot be decoded."""
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert(self.mode), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            self.unreadable += 1
            warnings.warn(f"skipped unreadable image {path} ({type(exc).__name__}: {exc}); "
                          f"{self.unreadable} so far in this process", stacklevel=3)
            return None
        return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())

    def target(self, image_id: int, height: int, width: int) -> dict:
        """The training target of image ``image_id``: its usable, non-crowd objects."""
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) or ann.get("category_id") not in self.label_of:
                continue
            box = clip_box(ann["bbox"], height, width)
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # zero area once clipped to the image
            boxes.append(box)
            labels.append(self.label_of[ann["category_id"]])
            if self.masks:
                masks.append(self._mask(ann, height, width))
        target = dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      labels=torch.tensor(labels, dtype=torch.int64), image_id=image_id)
        if self.masks:
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width,
                                                                                          dtype=torch.uint8)
        return target

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        if not ann.get("segmentation"):
            raise InvalidValueError(f"annotation {ann.get('id')} of image {ann['image_id']} has no segmentation; "
                                    "instance segmentation (--arch maskrcnn) needs masks: use fasterrcnn or retinanet")
        from pycocotools import mask as mask_utils

        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        """Image ``index`` and its target; an unreadable image is replaced by the next readable one."""
        for offset in range(len(self)):
            info = self.coco.imgs[self.image_ids[(index + offset) % len(self)]]
            image = self._image(info)
            if image is not None:
                break
        else:
            raise InvalidValueError(f"no image in {self.image_dir} can be decoded")
        height, width = image.shape[-2:]
        target = self.target(info["id"], height, width)
        if self.flip > 0 and torch.rand(()) < self.flip:
            image, target = hflip(image, target)
        return image, target


def clip_box(bbox: list[float], height: int, width: int) -> list[float]:
    """COCO's ``[x, y, w, h]`` as ``[x0, y0, x1, y1]`` clipped to a ``height`` x ``width`` image."""
    x, y, w, h = bbox
    return [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its target left to right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = dict(target, boxes=boxes)
    if "masks" in target:
        flipped["masks"] = target["masks"].flip(-1)
    return image.flip(-1), flipped


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists: images differ in size and targets in object count."""
    images, targets = zip(*batch)
    return list(images), list(targets)
