"""``create_model``: timm's factory with a clear error for unknown names."""
from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn


def check_model_name(name: str) -> None:
    """Raise a ValueError with close suggestions if timm has no model called ``name``."""
    if not isinstance(name, str) or not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}(timm.list_models('patnet*') lists PATNet's variants)")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` for any timm model, PATNet included; unknown names get close suggestions."""
    check_model_name(name)
    return timm.create_model(name, **kwargs)
