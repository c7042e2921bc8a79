"""What several commands share: the ``--device`` flag, ``KEY=VALUE`` flags, and turning given flags into
config fields."""
from __future__ import annotations

import argparse
import ast
import dataclasses
from typing import Any

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device``, the same for every command (``default=None``: the config's own, which is auto)."""
    parser.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default: auto)")


def parse_keyword(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` as ``(key, value)``: the value as a Python literal when it is one (``4``, ``(1, 2)``,
    ``True``), else as a string; raises ValueError naming what is wrong."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier():
        raise ValueError(f"{text!r} is not KEY=VALUE (e.g. n_div=4 or act_layer=gelu)")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return key, value


class KeywordArguments(argparse.Action):
    """``--flag KEY=VALUE ...`` into a dict; a malformed entry is an argparse error (usage and exit 2)."""

    def __call__(self, parser, namespace, values, option_string=None):
        keywords = {}
        for text in values:
            try:
                key, value = parse_keyword(text)
            except ValueError as exc:
                parser.error(f"argument {option_string}: {exc}")
            keywords[key] = value
        setattr(namespace, self.dest, keywords)


def add_config_options(parser: argparse.ArgumentParser, options: list[tuple], defaults) -> None:
    """Flags that each set one field of a config dataclass: ``(flags, field, kind, help)`` rows, ``kind`` a type,
    ``"store_true"``, ``"bool"`` (``--x/--no-x``), ``"int+"`` (one or more integers) or
    :class:`KeywordArguments`. Every flag defaults to ``None`` (not given), and its help shows ``defaults``' value."""
    actions = {"store_true": dict(action="store_true"), "bool": dict(action=argparse.BooleanOptionalAction),
               "int+": dict(type=int, nargs="+"), KeywordArguments: dict(nargs="*", action=KeywordArguments)}
    for flags, name, kind, help_text in options:
        default = getattr(defaults, name)
        help_text += f" (default: {default})" if default not in (None, {}) else ""
        parser.add_argument(*flags, dest=name, default=None, help=help_text, **actions.get(kind, dict(type=kind)))


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
