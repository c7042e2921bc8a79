"""Using trained checkpoints: rebuild the model, evaluate it on a dataset, classify image files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from ..data import build_dataset, build_transform, dataset_info
from ..device import resolve_device
from ..errors import InvalidValueError, MissingFileError
from ..fileio import write_text_atomic
from ..models import create_model
from . import checkpoint as ckpt
from .distributed import DistContext
from .evaluate import EvalResult, evaluate
from .report import plot_confusion

MAX_CONFUSION_CLASSES = 20


def load_trained_model(path: str | os.PathLike, ema: bool = False, expected_model: str | None = None,
                       device: str | torch.device | None = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model of checkpoint ``path`` (run directory, checkpoint directory or weights file), in eval mode,
    with the checkpoint's metadata; ``device`` as :func:`patnet.device.resolve_device` takes it."""
    path = Path(path)
    directory = ckpt.resolve_checkpoint(path)
    weights = path if path.is_file() else directory / (ckpt.EMA_WEIGHTS if ema else ckpt.WEIGHTS)
    if not weights.is_file():
        raise MissingFileError(f"{weights} does not exist; {'the run kept no EMA, drop --ema' if ema else ''}")
    meta = ckpt.read_metadata(weights)
    if expected_model is not None and expected_model != meta["model"]:
        raise InvalidValueError(f"{weights} holds a {meta['model']} model, not {expected_model}; "
                                f"drop --model or pass --model {meta['model']}")
    device = resolve_device(device)
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                         **meta["model_kwargs"])
    ckpt.load_into(model, ckpt.load_weights(weights), weights)
    return model.to(device).eval(), meta


def evaluate_checkpoint(model: torch.nn.Module, meta: dict, dataset: str | None = None, data_dir: str | None = None,
                        batch_size: int = 256, workers: int = 0) -> EvalResult:
    """Evaluate a loaded checkpoint on the val split of ``dataset`` (default: the one it was trained on)."""
    dataset = dataset or meta["dataset"]
    if dataset_info(dataset).in_chans != meta["in_chans"]:
        raise InvalidValueError(f"the model takes {meta['in_chans']}-channel images but --dataset {dataset} has "
                                f"{dataset_info(dataset).in_chans}; evaluate on a dataset like the training one")
    val_set = build_dataset(dataset, "val", data_dir, meta["img_size"])
    if len(val_set.classes) != meta["num_classes"]:
        raise InvalidValueError(f"the model has {meta['num_classes']} classes but the {dataset} val split has "
                                f"{len(val_set.classes)}; evaluate on the data it was trained on")
    device = next(model.parameters()).device
    loader = DataLoader(val_set, batch_size, num_workers=workers)
    return evaluate(model, loader, meta["num_classes"], DistContext(0, 1, device))


def write_eval_report(output: str | os.PathLike, checkpoint: str | os.PathLike, meta: dict, dataset: str,
                      result: EvalResult) -> list[Path]:
    """Write ``eval.json`` (and ``confusion.png`` for up to 20 classes) to ``output``; return the paths."""
    output = Path(output)
    report = dict(checkpoint=str(checkpoint), model=meta["model"], epoch=meta["epoch"], dataset=dataset,
                  images=result.count, top1=result.top1, top5=result.top5, loss=result.loss)
    write_text_atomic(output / "eval.json", json.dumps(report, indent=1) + "\n")
    written = [output / "eval.json"]
    if meta["num_classes"] <= MAX_CONFUSION_CLASSES:
        plot_confusion(result.confusion, meta["class_names"], output / "confusion.png",
                       title=f"{meta['model']} on {dataset}: top-1 {result.top1:.2f}%")
        written.append(output / "confusion.png")
    return written


@torch.inference_mode()
def predict_files(model: torch.nn.Module, meta: dict, files: list[str | os.PathLike], topk: int = 5
                  ) -> list[list[tuple[str, float]]]:
    """For each image file, its ``topk`` (class name, probability) pairs, most likely first."""
    transform = build_transform(meta["dataset"], meta["img_size"], train=False)
    mode = "L" if meta["in_chans"] == 1 else "RGB"
    batch = []
    for file in files:
        if not Path(file).is_file():
            raise MissingFileError(f"image {file} does not exist")
        try:
            with Image.open(file) as image:
                batch.append(transform(image.convert(mode)))
        except (UnidentifiedImageError, OSError) as exc:
            raise InvalidValueError(f"cannot read image {file}: {exc}") from None
    device = next(model.parameters()).device
    probabilities = model(torch.stack(batch).to(device)).float().softmax(dim=1)
    top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
    names = meta["class_names"]
    return [[(names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)]
