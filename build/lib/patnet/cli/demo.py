"""``patnet demo``: build every PATNet variant and print its size and cost."""
from __future__ import annotations

import argparse
import time

from ..errors import InvalidValueError
from ..flops import count_macs, count_params
from ..models import check_model_name, create_model, patnet_variants


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="timm model names (default: every patnet_* variant)")
    parser.add_argument("--img-size", type=int, default=224, help="input resolution for MACs (default 224)")


def run(args: argparse.Namespace) -> int:
    if args.img_size < 1:
        raise InvalidValueError(f"--img-size must be positive, got {args.img_size}")
    names = args.models or patnet_variants()
    for name in names:
        check_model_name(name)
    print(f"{'model':<14}{'params':>14}{'MACs':>18}{'GMACs':>9}{'build s':>9}")
    for name in names:
        start = time.perf_counter()
        model = create_model(name)
        built = time.perf_counter() - start
        macs = count_macs(model, (3, args.img_size, args.img_size))
        print(f"{name:<14}{count_params(model):>14,}{macs:>18,}{macs / 1e9:>9.3f}{built:>9.2f}")
    return 0
