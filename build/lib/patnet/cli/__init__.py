"""The `patnet` command: one module per sub-command, each only parsing flags and calling the library.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when its
command runs, so ``patnet --help`` stays fast. A :class:`patnet.errors.UserError` is printed as one
line (exit status 2); any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("patnet.cli.demo", "build every PATNet variant and print its params and MACs"),
    "export": ("patnet.cli.export", "export a model's deployment form to ONNX or TorchScript, verified"),
    "train": ("patnet.cli.train", "train a model (Fashion-MNIST, an image folder or a synthetic set); resumable"),
    "eval": ("patnet.cli.eval", "evaluate a checkpoint: top-1/top-5, confusion matrix"),
    "predict": ("patnet.cli.predict", "print the top-5 classes of images with a trained checkpoint"),
    "bench": ("patnet.cli.bench", "compare models' params, MACs, latency and throughput on this machine"),
    "study": ("patnet.cli.study", "Fashion-MNIST study: PATNet-T0 vs FasterNet-T0 and PAT-block ablations; resumable"),
    "detect": ("patnet.cli.detect", "detection and instance segmentation: train, eval, predict"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="patnet", description="PATNet vision backbones.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parsers = {}
    for name, (module, help_text) in COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = build_parser()
    # Register only the chosen command's arguments (imports its module).
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in COMMANDS:
        importlib.import_module(COMMANDS[name][0]).add_arguments(parsers[name])
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        parsers[args.command].exit(2, f"patnet {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        print(f"patnet {args.command}: interrupted", file=sys.stderr)
        return 130
