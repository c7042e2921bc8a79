"""The one model factory: timm's ``create_model`` with clear errors, and the lists of PATNet's variants.

Every part of the project (engine, bench, export, study, demo) builds models here, so an unknown name
always gets the same close-name suggestions and a bad keyword the same one-line error.
"""
from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from ..errors import InvalidValueError, UserError

_SIZE_ORDER = "tsml"  # tiny, small, medium, large


def size_key(name: str) -> tuple[int, str]:
    """Sort key putting ``*_t0 < *_t1 < *_t2 < *_s < *_m < *_l``; other names after them, by name."""
    suffix = name.rpartition("_")[2]
    rank = _SIZE_ORDER.find(suffix[:1]) if suffix else -1
    return (rank if rank >= 0 else len(_SIZE_ORDER), suffix)


def patnet_variants() -> list[str]:
    """The registered PATNet variants, smallest first (from timm's registry, never a hand-written list)."""
    return sorted(timm.list_models(module="patnet"), key=size_key)


def baseline_partner(name: str) -> str | None:
    """timm's ``fasternet_X`` for ``patnet_X`` (the model PATNet claims to beat), None for other names."""
    family, _, variant = name.partition("_")
    partner = f"fasternet_{variant}"
    return partner if family == "patnet" and timm.is_model(partner) else None


def check_model_name(name: str) -> None:
    """Raise a one-line error with close suggestions if timm has no model called ``name``."""
    if not isinstance(name, str) or not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InvalidValueError(f"unknown model {name!r}; {hint}(timm.list_models('patnet*') lists PATNet's "
                                "variants)")


def create_model(name: str, num_classes: int | None = None, in_chans: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, ...)`` for any timm model, PATNet included.

    ``num_classes``/``in_chans`` are passed only when given (``None`` keeps the model's default). An unknown
    name gets close suggestions; a keyword the model does not take is a one-line error.
    """
    check_model_name(name)
    given = {key: value for key, value in (("num_classes", num_classes), ("in_chans", in_chans)) if value is not None}
    try:
        return timm.create_model(name, **given, **kwargs)
    except UserError:
        raise
    except TypeError as exc:
        raise InvalidValueError(f"cannot build {name} with {kwargs}: {exc}") from None
