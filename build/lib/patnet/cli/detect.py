"""``patnet detect train | eval | predict``: detectors on PATNet (or any timm) backbones.

Flags follow ``patnet train`` (and mmdetection's recipe names); a flag left out takes its value from
``--preset`` (or, with ``--resume``, from the checkpoint's config), else the default shown.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ..detection.coco_eval import (
    evaluate_results,
    load_results,
    to_coco_results,
    write_eval,
)
from ..detection.config import DATASETS, PRESETS, DetectConfig, make_detect_config
from ..detection.engine import resume_detect_config, train_detector
from ..detection.inference import (
    draw_detections,
    evaluate_detector,
    load_detector,
    predict_images,
    read_images,
)
from ..detection.models import ARCHS
from ..errors import InvalidValueError
from ..fileio import write_text_atomic
from .common import (
    DEVICE_HELP,
    KeywordArguments,
    add_config_options,
    add_device_argument,
    config_overrides,
)

_DEFAULTS = DetectConfig()

# (flags, config field, type or action, help)
_TRAIN_OPTIONS = [
    (("--arch",), "arch", str, f"detector: {', '.join(ARCHS)}"),
    (("--backbone",), "backbone", str, "timm model name"),
    (("--backbone-kwargs",), "backbone_kwargs", KeywordArguments, "extra backbone arguments, KEY=VALUE ..."),
    (("--backbone-weights",), "backbone_weights", str, "a `patnet train` run/checkpoint or a weights file"),
    (("--dataset",), "dataset", str, f"one of {', '.join(DATASETS)}"),
    (("--data-dir",), "data_dir", str, "COCO folder (annotations/instances_<split>.json, <split>/); where "
                                       "generated sets are written"),
    (("--train-split",), "train_split", str, "training split (default: train2017 for coco, train otherwise)"),
    (("--val-split",), "val_split", str, "validation split (default: val2017 for coco, val otherwise)"),
    (("--epochs",), "epochs", int, "epochs to train"),
    (("-b", "--batch-size"), "batch_size", int, "images per process and step"),
    (("--lr",), "lr", float, "learning rate (default: --lr-base x global batch / 16)"),
    (("--lr-base",), "lr_base", float, "learning rate per 16 images"),
    (("--weight-decay",), "weight_decay", float, "AdamW weight decay"),
    (("--warmup-iters",), "warmup_iters", int, "linear warm-up iterations"),
    (("--lr-steps",), "lr_steps", "int+",
     "epochs after which the lr is divided by 10 (default: the preset's steps at the same fractions of --epochs)"),
    (("--clip-grad",), "clip_grad", float, "clip the gradient norm to this value"),
    (("--min-size",), "min_size", int, "shorter image side after resizing"),
    (("--max-size",), "max_size", int, "longest image side after resizing"),
    (("--levels",), "levels", "int+", "backbone feature levels 0-3 (strides 4-32) under the FPN"),
    (("--fpn-channels",), "fpn_channels", int, "FPN width"),
    (("--frozen-stages",), "frozen_stages", int, "freeze the stem (0) and that many stages; -1: none"),
    (("--norm-eval",), "norm_eval", "bool", "keep the backbone's BatchNorm statistics frozen"),
    (("--anchor-sizes",), "anchor_sizes", "int+", "anchor size per pyramid level"),
    (("--box-head-dim",), "box_head_dim", int, "width of the R-CNN box head"),
    (("--mask-head-layers",), "mask_head_layers", "int+", "widths of Mask R-CNN's mask-head convs"),
    (("--detector-kwargs",), "detector_kwargs", KeywordArguments, "torchvision detector arguments, KEY=VALUE ... "
                                                             "(e.g. box_detections_per_img=50)"),
    (("--hflip",), "hflip", float, "horizontal-flip probability"),
    (("--amp",), "amp", "store_true", "mixed precision (float16 on CUDA, bfloat16 on CPU)"),
    (("--output",), "output", str, "run directory (checkpoints, metrics, plots)"),
    (("--seed",), "seed", int, "random seed"),
    (("-j", "--workers"), "workers", int, "data-loading worker processes"),
    (("--device",), "device", str, DEVICE_HELP),
]


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe (coco-1x: the "
                        "authors' Mask R-CNN 1x; fm-scenes: Fashion-MNIST scenes on a CPU)")
    parser.add_argument("--resume", metavar="PATH", help="continue a run: its directory or a checkpoint in it")
    add_config_options(parser, _TRAIN_OPTIONS, _DEFAULTS)


def _add_eval(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="a `patnet detect train` run or checkpoint folder")
    source.add_argument("--detections", metavar="FILE", help="score an existing COCO results file (no model)")
    parser.add_argument("--data-dir", help="COCO folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", help="split to evaluate (default: the checkpoint's validation split, val2017 "
                        "with --detections)")
    parser.add_argument("-b", "--batch-size", type=int, default=2)
    parser.add_argument("-j", "--workers", type=int, default=0)
    add_device_argument(parser)
    parser.add_argument("--output", default="output/detect-eval", help="folder for eval.json and detections.json")


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a `patnet detect train` run or "
                        "checkpoint folder")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="draw detections at least this sure")
    add_device_argument(parser)
    parser.add_argument("--output", default="output/detect-predict", help="folder for the PNGs and detections.json")


def _add_study(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small version, under 10 minutes")
    parser.add_argument("--output", metavar="DIR", help="runs and data (default: output/detection-study, "
                        "output/detection-study-quick with --quick)")
    parser.add_argument("--report-dir", metavar="DIR", help="where results.md, results.json and the plot go "
                        "(default: docs/detection/study or docs/detection/study-quick)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, add, help_text in (("train", _add_train, "train a detector; resumable"),
                                 ("eval", _add_eval, "COCO box and mask AP of a checkpoint or a results file"),
                                 ("predict", _add_predict, "draw a checkpoint's detections on image files"),
                                 ("study", _add_study, "Mask R-CNN on Fashion-MNIST scenes: PATNet-T0 against "
                                                       "FasterNet-T0 backbones; resumable")):
        add(actions.add_parser(name, help=help_text, description=help_text))


def _train(args: argparse.Namespace) -> int:
    given = config_overrides(args, DetectConfig)
    if args.resume:
        if args.preset:
            raise InvalidValueError("--preset and --resume cannot be combined: a resumed run keeps its own config")
        config = resume_detect_config(args.resume, **given)
    else:
        config = make_detect_config(args.preset, **given)
    train_detector(config, resume=args.resume)
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InvalidValueError(f"-b/--batch-size {args.batch_size} is invalid: expected an integer >= 1")
    if args.detections:
        from ..data.coco import annotation_file, load_coco

        if args.data_dir is None:
            raise InvalidValueError("--detections needs --data-dir D (the COCO folder the results are for)")
        coco = load_coco(annotation_file(args.data_dir, args.split or "val2017"))
        results = load_results(args.detections, coco)
        with_masks = bool(results) and "segmentation" in results[0]
        metrics = evaluate_results(coco, results, ("bbox", "segm") if with_masks else ("bbox",))
        written = write_eval(args.output, metrics)
    else:
        model, meta = load_detector(args.checkpoint, args.device)
        data_dir = args.data_dir or meta["data_dir"]
        split = args.split or DATASETS[meta["dataset"]].val_split
        metrics, results = evaluate_detector(model, meta, data_dir, split, args.batch_size, args.workers)
        written = write_eval(args.output, metrics, results)
    print("  ".join(f"{key} {value:.2f}" for key, value in metrics.items()
                    if key.endswith("_AP") or key.endswith("_AP50")))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _predict(args: argparse.Namespace) -> int:
    model, meta = load_detector(args.checkpoint, args.device)
    outputs = predict_images(model, meta, args.images)
    output = Path(args.output)
    results = []
    for index, (file, image, detections) in enumerate(zip(args.images, read_images(args.images, meta["in_chans"]),
                                                          outputs)):
        picture = output / f"{Path(file).stem}.png"
        drawn = draw_detections(image, detections, meta["class_names"], picture, args.score_threshold)
        results += [dict(r, file_name=str(file)) for r in
                    to_coco_results([detections], [index], meta["category_ids"])]
        print(f"{file}: {drawn} detection(s) at score >= {args.score_threshold} -> {picture}")
    write_text_atomic(output / "detections.json", json.dumps(results) + "\n")
    print(f"wrote {output / 'detections.json'}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from ..detection.study import PLANS, run_detection_study

    name = "quick" if args.quick else "full"
    output = args.output or ("output/detection-study-quick" if args.quick else "output/detection-study")
    report_dir = args.report_dir or ("docs/detection/study-quick" if args.quick else "docs/detection/study")
    words = ["patnet", "detect", "study"] + ["--quick"] * args.quick
    words += [w for flag, value in (("--output", args.output), ("--report-dir", args.report_dir)) if value
              for w in (flag, value)]
    run_detection_study(PLANS[name], output, report_dir, shlex.join(words))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "eval": _eval, "predict": _predict, "study": _study}[args.action](args)
