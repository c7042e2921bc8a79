"""``patnet eval``: top-1/top-5 of a checkpoint on a validation split, and a confusion-matrix PNG."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data import DATASETS
from .engine.inference import evaluate_checkpoint, load_trained_model
from .engine.report import plot_confusion

MAX_CONFUSION_CLASSES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="run directory (uses its last checkpoint), checkpoint directory or model.safetensors")
    parser.add_argument("--model", help="expected model name; refuses a checkpoint of another architecture")
    parser.add_argument("--dataset", choices=sorted(DATASETS), help="default: the dataset it was trained on")
    parser.add_argument("--data-dir", help="Fashion-MNIST IDX folder, or image folder with val/")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("-j", "--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="output/eval", help="folder for eval.json and confusion.png")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"-b/--batch-size {args.batch_size} is invalid: expected an integer >= 1")
    model, meta = load_trained_model(args.checkpoint, ema=args.ema, expected_model=args.model, device=args.device)
    result = evaluate_checkpoint(model, meta, args.dataset, args.data_dir, args.batch_size, args.workers)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or meta["dataset"]
    report = dict(checkpoint=str(args.checkpoint), model=meta["model"], epoch=meta["epoch"], dataset=dataset,
                  images=result.count, top1=result.top1, top5=result.top5, loss=result.loss)
    (output / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{meta['model']} (epoch {meta['epoch']}) on {dataset} val, {result.count} images: "
          f"top1 {result.top1:.2f}%  top5 {result.top5:.2f}%  loss {result.loss:.4f}")
    if meta["num_classes"] <= MAX_CONFUSION_CLASSES:
        plot_confusion(result.confusion, meta["class_names"], output / "confusion.png",
                       title=f"{meta['model']} on {dataset}: top-1 {result.top1:.2f}%")
        print(f"confusion matrix: {output / 'confusion.png'}")
    print(f"report: {output / 'eval.json'}")
    return 0
