"""The `patnet` command: one sub-command per capability.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``patnet --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("patnet.demo", "build every PATNet variant and print its params and MACs"),
    "export": ("patnet.export", "export a model's deployment form to ONNX or TorchScript, verified"),
    "train": ("patnet.train_cli", "train a model (Fashion-MNIST, an image folder or a synthetic set); resumable"),
    "eval": ("patnet.eval_cli", "evaluate a checkpoint: top-1/top-5, confusion matrix"),
    "predict": ("patnet.predict_cli", "print the top-5 classes of images with a trained checkpoint"),
    "bench": ("patnet.bench.command", "compare models' params, MACs, latency and throughput on this machine"),
    "study": ("patnet.study", "Fashion-MNIST study: PATNet-T0 vs FasterNet-T0 and PAT-block ablations; resumable"),
}

# Errors that carry a user-facing message; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError, PermissionError)


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
        module = importlib.import_module(COMMANDS[name][0])
        module.add_arguments(parsers[name])
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        parsers[args.command].exit(2, f"patnet {args.command}: error: {message}\n")
    except KeyboardInterrupt:
        print(f"patnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
