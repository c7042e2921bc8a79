"""Using trained checkpoints: rebuild the model, evaluate it on a dataset, classify image files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS

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
    with the checkpoint's metadata; ``device`` as :func:`patnet.device.resolve_device` takes it. Weights with
    NaN or infinite values (a diverged run) are refused."""
    device = resolve_device(device)  # a bad --device is reported before any file is read
    path = Path(path)
    directory = ckpt.resolve_checkpoint(path)
    weights = path if path.is_file() else directory / (ckpt.EMA_WEIGHTS if ema else ckpt.WEIGHTS)
    if not weights.is_file():
        raise MissingFileError(f"{weights} does not exist; {'the run kept no EMA, drop --ema' if ema else ''}")
    meta = ckpt.read_metadata(weights)
    if expected_model is not None and expected_model != meta["model"]:
        raise InvalidValueError(f"{weights} holds a {meta['model']} model, not {expected_model}; "
                                f"drop --model or pass --model {meta['model']}")
    state_dict = ckpt.load_weights(weights)
    ckpt.check_finite(state_dict, str(weights), "use an earlier checkpoint of the run, or train again with a lower "
                                                "--lr or with --clip-grad")
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                         **meta["model_kwargs"])
    ckpt.load_into(model, state_dict, weights)
    return model.to(device).eval(), meta


def evaluate_checkpoint(model: torch.nn.Module, meta: dict, dataset: str | None = None, data_dir: str | None = None,
                        batch_size: int = 256, workers: int = 0) -> EvalResult:
    """Evaluate a loaded checkpoint on the val split of ``dataset`` (default: the one it was trained on)."""
    for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidValueError(f"{name}={value!r} is invalid: expected an integer >= {low}")
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


def image_files(paths: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """``paths`` (one path, or a list) with each folder replaced by the image files in it (sorted by name, not
    recursive)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise MissingFileError(f"folder {path} holds no image files ({', '.join(IMG_EXTENSIONS)})")
            files.extend(found)
        elif not path.is_file():
            raise MissingFileError(f"image {path} does not exist")
        else:
            files.append(path)
    return files


def _read_image(file: Path, transform, mode: str) -> torch.Tensor:
    try:
        with Image.open(file) as image:
            return transform(image.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidValueError(f"cannot read image {file}: {exc}; pass image files only") from None


@torch.inference_mode()
def predict_files(model: torch.nn.Module, meta: dict, files: list[str | os.PathLike], topk: int = 5,
                  batch_size: int = 64) -> list[list[tuple[str, float]]]:
    """For each image file (see :func:`image_files` for folders), its ``topk`` (class name, probability) pairs,
    most likely first; images are classified ``batch_size`` at a time."""
    for name, value in (("topk", topk), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{name}={value!r} is invalid: expected an integer >= 1")
    transform = build_transform(meta["dataset"], meta["img_size"], train=False)
    mode = "L" if meta["in_chans"] == 1 else "RGB"
    files = image_files(files)
    device = next(model.parameters()).device
    names = meta["class_names"]
    rankings = []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([_read_image(file, transform, mode) for file in files[start:start + batch_size]])
        probabilities = model(batch.to(device)).float().softmax(dim=1)
        top = probabilities.topk(min(topk, probabilities.shape[1]), dim=1)
        rankings += [[(names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
                     for values, indices in zip(top.values, top.indices)]
    return rankings
