"""Using detection checkpoints: rebuild the detector, evaluate it with COCOeval, predict and draw image files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.coco import CocoDetection, collate
from ..device import resolve_device
from ..engine import checkpoint as ckpt
from ..errors import InvalidValueError, MissingFileError
from ..plotting import pyplot, save_figure
from .coco_eval import evaluate_results, to_coco_results
from .models import build_detector

TASK = "detection"


def detector_from_metadata(meta: dict) -> torch.nn.Module:
    """The (untrained) detector a detection checkpoint's metadata describes."""
    return build_detector(meta["arch"], meta["backbone"], len(meta["class_names"]), in_chans=meta["in_chans"],
                          levels=meta["levels"], fpn_channels=meta["fpn_channels"], anchor_sizes=meta["anchor_sizes"],
                          min_size=meta["min_size"], max_size=meta["max_size"], image_mean=meta["image_mean"],
                          image_std=meta["image_std"], backbone_kwargs=meta["backbone_kwargs"],
                          box_head_dim=meta["box_head_dim"], mask_head_layers=meta["mask_head_layers"],
                          **meta["detector_kwargs"])


def load_detector(path: str | os.PathLike, device: str | None = "cpu") -> tuple[torch.nn.Module, dict]:
    """The detector of checkpoint ``path`` (run folder, checkpoint folder or weights file) in eval mode, and
    its metadata."""
    path = Path(path)
    directory = ckpt.resolve_checkpoint(path)
    weights = path if path.is_file() else directory / ckpt.WEIGHTS
    meta = ckpt.read_metadata(weights)
    if meta.get("task") != TASK:
        raise InvalidValueError(f"{weights} is a classification checkpoint ({meta.get('model')}), not a detector; "
                                "use `patnet eval`/`patnet predict` for it, or pass a `patnet detect train` run")
    model = detector_from_metadata(meta)
    state = ckpt.load_weights(weights)
    ckpt.check_finite(state, str(weights), "use an earlier checkpoint of the run")
    ckpt.load_into(model, state, weights)
    return model.to(resolve_device(device)).eval(), meta


def check_dataset_classes(meta: dict, dataset: CocoDetection) -> None:
    if dataset.category_ids != meta["category_ids"]:
        raise InvalidValueError(f"the detector was trained on {len(meta['category_ids'])} categories "
                                f"(ids {meta['category_ids'][:5]}...) but {dataset.root} split {dataset.split} has "
                                f"{len(dataset.category_ids)} (ids {dataset.category_ids[:5]}...); evaluate on "
                                "data with the same categories")


@torch.inference_mode()
def detect_dataset(model: torch.nn.Module, dataset: CocoDetection, batch_size: int = 2, workers: int = 0,
                   sampler=None) -> list[dict]:
    """COCO results (the dataset's own category ids) of ``model`` on every image of ``dataset`` (or ``sampler``'s)."""
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate)
    results = []
    model.eval()
    for images, targets in loader:
        outputs = model([image.to(device) for image in images])
        results += to_coco_results(outputs, [t["image_id"] for t in targets], dataset.category_ids)
    return results


def evaluate_detector(model: torch.nn.Module, meta: dict, data_dir: str | os.PathLike, split: str,
                      batch_size: int = 2, workers: int = 0) -> tuple[dict, list[dict]]:
    """COCOeval metrics (percent) and the COCO results of ``model`` on ``split`` of ``data_dir``."""
    dataset = CocoDetection(data_dir, split, meta["in_chans"], masks=False)
    check_dataset_classes(meta, dataset)
    results = detect_dataset(model, dataset, batch_size, workers)
    iou_types = ("bbox", "segm") if meta["arch"] == "maskrcnn" else ("bbox",)
    return evaluate_results(dataset.coco, results, iou_types, image_ids=dataset.image_ids), results


def read_images(files: list[str | os.PathLike], in_chans: int) -> list[torch.Tensor]:
    """Image files as float ``C x H x W`` tensors in [0, 1]; one-line errors for missing or unreadable files."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        if not Path(file).is_file():
            raise MissingFileError(f"image {file} does not exist")
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert("L" if in_chans == 1 else "RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidValueError(f"cannot read image {file}: {exc}") from None
        images.append(torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()))
    return images


@torch.inference_mode()
def predict_images(model: torch.nn.Module, meta: dict, files: list[str | os.PathLike]) -> list[dict]:
    """torchvision outputs (on the CPU) for each image file."""
    device = next(model.parameters()).device
    outputs = []
    for image in read_images(files, meta["in_chans"]):
        output = model([image.to(device)])[0]
        outputs.append({key: value.cpu() for key, value in output.items()})
    return outputs


def draw_detections(image: torch.Tensor, output: dict, class_names: list[str], path: str | os.PathLike,
                    score_threshold: float = 0.5) -> int:
    """Draw boxes, labels and masks scoring at least ``score_threshold`` over ``image`` into a PNG; returns
    how many were drawn."""
    plt = pyplot()
    keep = output["scores"] >= score_threshold
    picture = image.permute(1, 2, 0).numpy()
    picture = np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture
    height, width = picture.shape[:2]
    fig, ax = plt.subplots(figsize=(max(4.0, width / 64), max(4.0, height / 64)), dpi=100)
    colors = plt.get_cmap("tab10")
    if "masks" in output:
        for k in torch.nonzero(keep).flatten().tolist():
            mask = output["masks"][k, 0].numpy() > 0.5
            picture = picture.copy()
            picture[mask] = 0.5 * picture[mask] + 0.5 * np.array(colors(output["labels"][k].item() % 10)[:3])
    ax.imshow(picture)
    for box, label, score in zip(output["boxes"][keep], output["labels"][keep], output["scores"][keep]):
        x0, y0, x1, y1 = box.tolist()
        color = colors(label.item() % 10)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        ax.text(x0, y0, f"{class_names[label.item() - 1]} {score:.2f}", color="white", fontsize=7,
                bbox=dict(facecolor=color, alpha=0.7, pad=1, linewidth=0))
    ax.set_axis_off()
    save_figure(fig, path)
    return int(keep.sum())
