"""A detector's backbone as a timm classifier, with weights from a ``patnet train`` checkpoint or a weights file."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..engine import checkpoint as ckpt
from ..engine.inference import load_trained_model
from ..errors import InvalidValueError, MissingFileError
from ..models import create_model


def _is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``patnet train`` run, checkpoint folder or weights file (it carries metadata)."""
    try:
        directory = ckpt.resolve_checkpoint(path)
        ckpt.read_metadata(path if path.is_file() else directory / ckpt.WEIGHTS)
    except (InvalidValueError, MissingFileError):
        return False
    return True


def load_backbone(name: str, weights: str | None, in_chans: int, kwargs: dict) -> nn.Module:
    """Classifier ``name`` for ``in_chans``-channel images, initialised from ``weights`` when given.

    A ``patnet train`` checkpoint must hold ``name`` trained on ``in_chans`` channels; a plain weights file
    (state dict or safetensors, e.g. the authors' PATNet checkpoints) is loaded by timm (``weights_only``).
    """
    if weights is None:
        return create_model(name, in_chans=in_chans, **kwargs)
    path = Path(weights)
    if not path.exists():
        raise MissingFileError(f"backbone weights {path} do not exist; pass a `patnet train` run or checkpoint "
                               "folder, or a weights file")
    if not _is_training_checkpoint(path):
        return create_model(name, in_chans=in_chans, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                            **kwargs)
    model, meta = load_trained_model(path)
    if meta["model"] != name:
        raise InvalidValueError(f"backbone weights {path} hold a {meta['model']} model, not {name}; "
                                f"pass --backbone {meta['model']}")
    if meta["in_chans"] != in_chans:
        raise InvalidValueError(f"backbone weights {path} take {meta['in_chans']}-channel images but the data has "
                                f"{in_chans}; train the backbone on images like the detection data")
    return model.train()
