"""``patnet predict``: the most likely classes of image files, by name, with a trained checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.inference import image_files, load_trained_model, predict_files
from ..errors import InvalidValueError
from .common import add_device_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders (every image file in them, in name order)")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="run directory (uses its last checkpoint), checkpoint directory or model.safetensors")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")
    parser.add_argument("--ema", action="store_true", help="use the EMA weights")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise InvalidValueError(f"--topk {args.topk} is invalid: expected an integer >= 1")
    files = image_files(args.images)
    for folder in (path for path in map(Path, args.images) if path.is_dir()):
        print(f"{folder}: {len(image_files([folder]))} image file(s), in name order")
    model, meta = load_trained_model(args.checkpoint, ema=args.ema, device=args.device)
    for file, ranking in zip(files, predict_files(model, meta, files, args.topk)):
        print(file)
        for place, (name, probability) in enumerate(ranking, 1):
            print(f"  {place}. {name:<20} {100 * probability:6.2f}%")
    return 0
