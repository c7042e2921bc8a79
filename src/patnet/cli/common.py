"""What several commands share: the ``--device`` flag, and turning given flags into config fields."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device``, the same for every command (``default=None``: the config's own, which is auto)."""
    parser.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default: auto)")


def config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The flags given on the command line that set fields of dataclass ``config_class``, by field name.

    A flag left out is ``None`` and so not an override; lists become tuples.
    """
    overrides = {}
    for field in dataclasses.fields(config_class):
        value = getattr(args, field.name, None)
        if value is not None:
            overrides[field.name] = tuple(value) if isinstance(value, list) else value
    return overrides
