"""``patnet study``: the Fashion-MNIST study (or, with ``--tune``, the grid that chose its recipe)."""
from __future__ import annotations

import argparse
import shlex

from ..errors import InvalidValueError
from ..study import PLANS, TUNING, run_study, run_tuning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    full, quick = PLANS["full"], PLANS["quick"]
    parser.description = (f"Train fasternet_t0 and patnet_t0 ({full.headline_seeds} seeds each) and 3 ablations "
                          f"of patnet_t0 ({full.ablation_seeds} seed each) on Fashion-MNIST under one recipe, then "
                          "report test accuracy, params, MACs and CPU latency. Finished runs are skipped, "
                          "unfinished ones resumed: the study can be run in pieces.")
    parser.add_argument("--quick", action="store_true",
                        help=f"small version (a few minutes): {quick.recipe['epochs']} epoch on {quick.train_subset} "
                             f"training images, {quick.headline_seeds} seeds for the headline models")
    parser.add_argument("--tune", action="store_true",
                        help=f"instead of the study, the grid that chose its recipe: lr {TUNING.lrs} x "
                             f"augmentation on/off for both headline models, {TUNING.epochs} epochs on "
                             f"{TUNING.train_images} training images, scored on {TUNING.holdout_images} held-out "
                             "training images")
    parser.add_argument("--output", metavar="DIR",
                        help="run directories (default: output/study, output/study-quick with --quick, "
                             "output/study-tune with --tune)")
    parser.add_argument("--report-dir", metavar="DIR",
                        help="where results.md, results.json and the plot go (default: docs/study/full, "
                             "docs/study/quick or docs/study/tuning)")


def run(args: argparse.Namespace) -> int:
    if args.quick and args.tune:
        raise InvalidValueError("--quick and --tune are different jobs; pass one of them")
    name = "tune" if args.tune else "quick" if args.quick else "full"
    output = args.output or {"full": "output/study", "quick": "output/study-quick", "tune": "output/study-tune"}[name]
    report_dir = args.report_dir or f"docs/study/{'tuning' if args.tune else name}"
    parts = ["patnet", "study"] + ["--quick"] * args.quick + ["--tune"] * args.tune
    parts += [item for flag, value in (("--output", args.output), ("--report-dir", args.report_dir)) if value
              for item in (flag, value)]
    if args.tune:
        run_tuning(TUNING, output, report_dir, shlex.join(parts))
    else:
        run_study(PLANS[name], output, report_dir, shlex.join(parts))
    return 0
