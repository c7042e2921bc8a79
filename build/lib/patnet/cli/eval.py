"""``patnet eval``: top-1/top-5 of a checkpoint on a validation split, and a confusion-matrix PNG."""
from __future__ import annotations

import argparse

from ..data import DATASETS
from ..engine.inference import evaluate_checkpoint, load_trained_model, write_eval_report
from ..errors import InvalidValueError
from .common import add_device_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="run directory (uses its last checkpoint), checkpoint directory or model.safetensors")
    parser.add_argument("--model", help="expected model name; refuses a checkpoint of another architecture")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="default: the dataset it was trained on")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX folder, or image folder with val/")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("-j", "--workers", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--output", default="output/eval", help="folder for eval.json and confusion.png")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InvalidValueError(f"-b/--batch-size {args.batch_size} is invalid: expected an integer >= 1")
    if args.workers < 0:
        raise InvalidValueError(f"-j/--workers {args.workers} is invalid: expected an integer >= 0")
    if not args.output.strip():
        raise InvalidValueError("--output '' is invalid: expected a folder name")
    model, meta = load_trained_model(args.checkpoint, ema=args.ema, expected_model=args.model, device=args.device)
    result = evaluate_checkpoint(model, meta, args.dataset, args.data_dir, args.batch_size, args.workers)
    dataset = args.dataset or meta["dataset"]
    written = write_eval_report(args.output, args.checkpoint, meta, dataset, result)
    print(f"{meta['model']} (epoch {meta['epoch']}) on {dataset} val, {result.count} images: "
          f"top1 {result.top1:.2f}%  top5 {result.top5:.2f}%  loss {result.loss:.4f}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
