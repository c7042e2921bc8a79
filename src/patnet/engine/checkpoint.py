"""Checkpoints that are never seen half-written.

A checkpoint is a directory ``<run>/checkpoints/epoch-NNNN/`` holding

- ``model.safetensors``: the weights, with metadata (model name and kwargs, class names, dataset,
  image size, epoch) that is enough to rebuild the model for ``patnet eval`` and ``patnet predict``;
- ``ema.safetensors``: the EMA weights, when training keeps an EMA;
- ``state.pt``: the training state (epoch, optimizer, scheduler, scaler, RNG states, config, history)
  of plain tensors and containers, loaded with ``torch.load(weights_only=True)``.

The directory is written under a temporary name and renamed when complete; ``<run>/last`` and
``<run>/best`` are symbolic links replaced atomically (``os.replace``). A crash at any moment leaves
``last`` and ``best`` pointing at complete checkpoints, and no directory is ever overwritten in place.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from ..errors import InvalidValueError, MissingFileError
from ..fileio import atomic_directory, atomic_path, write_bytes_durable

FORMAT = "patnet-checkpoint-1"
WEIGHTS, EMA_WEIGHTS, STATE = "model.safetensors", "ema.safetensors", "state.pt"


def _plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict of contiguous CPU tensors that share no storage (what safetensors requires)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def point(link: Path, target: Path) -> None:
    """Make symbolic link ``link`` point at ``target`` (relative), replacing it atomically."""
    with atomic_path(link) as temporary:
        temporary.symlink_to(os.path.relpath(target, link.parent))


def save_checkpoint(run_dir: str | os.PathLike, epoch: int, model: torch.nn.Module, metadata: dict[str, Any],
                    state: dict[str, Any], ema: torch.nn.Module | None = None) -> Path:
    """Write checkpoint ``epoch`` of a run atomically and return its directory (``last`` is not moved)."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"epoch-{epoch:04d}"
    for again in itertools.count(1):  # an epoch written again after resuming from an earlier checkpoint
        if not final.exists():        # gets a new name: the old one may be what last/best point at
            break
        final = checkpoints / f"epoch-{epoch:04d}-{again}"
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_directory(final) as staging:
        write_bytes_durable(staging / WEIGHTS, save(_plain_state_dict(model), metadata=meta))
        if ema is not None:
            write_bytes_durable(staging / EMA_WEIGHTS, save(_plain_state_dict(ema), metadata=meta))
        write_bytes_durable(staging / STATE, _torch_bytes(state))
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep_links: tuple[str, ...] = ("last", "best")) -> None:
    """Delete checkpoint directories (and leftovers of interrupted writes) no link points at."""
    run_dir = Path(run_dir)
    kept = {(run_dir / name).resolve() for name in keep_links if (run_dir / name).is_symlink()}
    for path in (run_dir / "checkpoints").iterdir():
        if path.resolve() not in kept:
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a run directory (its ``last``), a checkpoint or a weights file."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint {path} does not exist; pass a run directory (e.g. output/train), "
                               f"its last/ or best/ checkpoint, or a {WEIGHTS} file")
    if path.is_file():
        return path.parent
    if (path / "last").exists():
        return (path / "last").resolve()
    if not (path / WEIGHTS).is_file():
        raise MissingFileError(f"{path} holds no {WEIGHTS}; pass a run directory or a checkpoint directory")
    return path.resolve()


def read_metadata(weights_file: str | os.PathLike) -> dict[str, Any]:
    """The metadata stored with a weights file written by ``save_checkpoint``."""
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InvalidValueError(f"{weights_file} is not a readable safetensors file ({exc}); "
                                "it may be truncated or of another format") from None
    if raw.get("format") != FORMAT:
        raise InvalidValueError(f"{weights_file} was not written by `patnet train` (no {FORMAT} metadata); "
                                "train a model with `patnet train` first")
    return {k: json.loads(v) for k, v in raw.items() if k != "format"}


def load_weights(weights_file: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise InvalidValueError(f"cannot read weights {weights_file}: {exc}") from None


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint (``torch.load`` with ``weights_only=True``: no code is run)."""
    path = Path(checkpoint_dir) / STATE
    if not path.is_file():
        raise MissingFileError(f"{checkpoint_dir} has no training state ({STATE}); resume needs a checkpoint "
                               "directory written by `patnet train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise InvalidValueError(f"cannot read training state {path}: {type(exc).__name__}: {exc}") from None


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load ``state_dict`` into ``model`` strictly; a mismatch is a one-line ValueError, not a traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        examples = (missing + unexpected + reshaped)[:3]
        raise InvalidValueError(f"weights in {source} do not fit {type(model).__name__}: {len(missing)} missing, "
                                f"{len(unexpected)} unexpected and {len(reshaped)} reshaped tensors (e.g. "
                                f"{', '.join(examples)}); it is a checkpoint of another architecture or configuration")
    model.load_state_dict(state_dict)
