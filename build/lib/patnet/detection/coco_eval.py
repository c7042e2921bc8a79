"""COCO evaluation with pycocotools: detections to COCO results, ``COCOeval`` for boxes and masks.

The metrics are exactly what ``pycocotools.cocoeval.COCOeval`` computes on the same files (its ``stats``),
in percent, plus per-class AP (mean over IoU 0.50:0.95, all areas, 100 detections, as COCOeval averages).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidValueError, MissingFileError
from ..fileio import write_text_atomic

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(outputs: list[dict], image_ids: list[int], category_ids: list[int]) -> list[dict]:
    """torchvision outputs (labels 1..K) as COCO results: xywh boxes, the dataset's category ids, RLE masks."""
    from pycocotools import mask as mask_utils

    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        masks = output.get("masks")
        binary = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8) if masks is not None else None
        for k, (box, label, score) in enumerate(zip(xywh, output["labels"].tolist(), output["scores"].tolist())):
            result = dict(image_id=int(image_id), category_id=int(category_ids[label - 1]),
                          bbox=[round(v, 2) for v in box], score=round(float(score), 5))
            if binary is not None:
                rle = mask_utils.encode(np.asfortranarray(binary[k]))
                result["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
            results.append(result)
    return results


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def evaluate_results(coco_gt, results: list[dict], iou_types=IOU_TYPES, image_ids: list[int] | None = None) -> dict:
    """COCOeval of ``results`` against ground truth ``coco_gt`` for each IoU type, in percent.

    Keys ``<type>_AP``, ``_AP50``, ``_AP75``, ``_APs``, ``_APm``, ``_APl`` and ``<type>_per_class`` (class
    name -> AP); ``None`` where COCOeval has no ground truth (its -1), e.g. APl without large objects. With
    no detections at all every AP is 0 (pycocotools cannot load an empty result list).
    """
    from pycocotools.cocoeval import COCOeval

    metrics: dict = {}
    for iou_type in iou_types:
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            continue
        if not results:
            metrics.update({f"{iou_type}_{name}": 0.0 for name in STAT_NAMES})
            metrics[f"{iou_type}_per_class"] = {cat["name"]: 0.0 for cat in coco_gt.loadCats(coco_gt.getCatIds())}
            continue
        coco_dt = _quiet(coco_gt.loadRes, [dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        _quiet(evaluator.summarize)
        metrics.update({f"{iou_type}_{name}": 100.0 * float(value) if value >= 0 else None
                        for name, value in zip(STAT_NAMES, evaluator.stats[:6])})  # -1: no object of that size
        metrics[f"{iou_type}_per_class"] = per_class_ap(evaluator, coco_gt)
    return metrics


def per_class_ap(evaluator, coco_gt) -> dict[str, float]:
    """AP per category (percent): COCOeval's precision averaged over IoUs and recall, all areas, 100 dets."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou, recall, category, area all, max dets 100]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[coco_gt.cats[cat_id]["name"]] = 100.0 * float(values.mean()) if values.size else None
    return per_class


def load_results(path: str | os.PathLike, coco_gt) -> list[dict]:
    """A COCO results file, checked against the ground truth's images and categories."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"detections file {path} does not exist")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"{path} is not valid JSON ({exc}); it must be a COCO results list") from None
    required = {"image_id", "category_id", "bbox", "score"}
    if not isinstance(results, list) or not all(isinstance(r, dict) and required <= set(r) for r in results):
        raise InvalidValueError(f"{path} is not a COCO results file: a list of {{image_id, category_id, bbox, score"
                                "[, segmentation]}} objects")
    unknown_images = {r["image_id"] for r in results} - set(coco_gt.imgs)
    unknown_cats = {r["category_id"] for r in results} - set(coco_gt.cats)
    if unknown_images or unknown_cats:
        raise InvalidValueError(f"{path} refers to {len(unknown_images)} image id(s) and {len(unknown_cats)} "
                                f"category id(s) not in the annotations (e.g. {sorted(unknown_images)[:3]} "
                                f"{sorted(unknown_cats)[:3]}); score it against the split it was made for")
    return results


def write_eval(output: str | os.PathLike, metrics: dict, results: list[dict] | None = None) -> list[Path]:
    """``OUT/eval.json`` (and ``OUT/detections.json`` when ``results`` are given); returns the paths."""
    output = Path(output)
    written = [output / "eval.json"]
    write_text_atomic(written[0], json.dumps(metrics, indent=1) + "\n")
    if results is not None:
        written.append(output / "detections.json")
        write_text_atomic(written[1], json.dumps(results) + "\n")
    return written
