"""Checkpoints that are never seen half-written, hold only finite weights, and load with timm itself.

A checkpoint is a directory ``<run>/checkpoints/epoch-NNNN/`` holding

- ``model.safetensors``: the weights (contiguous CPU tensors), with the run's facts in its header (dataset,
  epoch, top-1, ...);
- ``config.json``: for a model built by timm, timm's own description of it, written by
  ``timm.models.save_config_for_hf``: architecture and arguments, class count, class names
  (``label_names``), input size, mean/std and resizing. ``timm.create_model("local-dir:<checkpoint>")``
  rebuilds the trained model from it and ``timm.models.push_to_hf_hub`` takes the folder as it is;
- ``ema.safetensors``: the EMA weights, when training keeps an EMA;
- ``state.pt``: the training state (epoch, optimizer, scheduler, scaler, RNG states, config, history)
  of plain tensors and containers, loaded with ``torch.load(weights_only=True)``.

Each fact is stored once: what ``config.json`` says is not repeated in the header. Other models, and
checkpoints written before ``config.json`` was added, keep every fact in the header; :func:`read_metadata`
reads both layouts into the same dictionary.

The directory is written under a temporary name and renamed when complete; ``<run>/last`` and
``<run>/best`` are symbolic links replaced atomically (``os.replace``). A crash at any moment leaves
``last`` and ``best`` pointing at complete checkpoints, and no directory is ever overwritten in place.
Weights with a NaN or infinite value are never written.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save
from timm.layers import get_act_layer
from timm.models._hub import save_config_for_hf  # not re-exported by timm.models

from ..errors import InvalidTypeError, InvalidValueError, MissingFileError
from ..fileio import atomic_directory, atomic_path, make_directory, write_bytes_durable

FORMAT = "patnet-checkpoint-1"
WEIGHTS, EMA_WEIGHTS, STATE, TIMM_CONFIG = "model.safetensors", "ema.safetensors", "state.pt", "config.json"
# Metadata that config.json holds for a model built by timm; the safetensors header keeps the rest.
TIMM_FACTS = ("model", "model_kwargs", "num_classes", "in_chans", "class_names", "img_size", "data_config")


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


def non_finite_count(state_dict: dict[str, torch.Tensor]) -> int:
    """How many floating-point tensors of ``state_dict`` hold a NaN or an infinity."""
    return sum(1 for value in state_dict.values()
               if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all())


def check_finite(state_dict: dict[str, torch.Tensor], source: str, fix: str) -> None:
    """A one-line error when weights ``source`` hold NaN or infinite values (a diverged run)."""
    bad = non_finite_count(state_dict)
    if bad:
        raise InvalidValueError(f"{source}: {bad} of {len(state_dict)} tensors hold NaN or infinite values (the run "
                                f"diverged); {fix}")


def describes_itself(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a classifier built by ``timm.create_model``, which timm's config.json can describe."""
    return all(hasattr(model, name) for name in ("pretrained_cfg", "_model_args", "num_classes", "num_features"))


def _serializable_arguments(model: torch.nn.Module) -> dict[str, Any]:
    """Replacements for the model arguments JSON cannot hold: an activation class by its timm name."""
    replacements = {}
    for key, value in model._model_args.items():
        try:
            json.dumps(value)
            continue
        except TypeError:
            pass
        name = getattr(value, "__name__", "").lower()
        try:
            get_act_layer(name)
        except (KeyError, ValueError):
            raise InvalidValueError(f"model argument {key}={value!r} cannot be stored in {TIMM_CONFIG}; build the "
                                    "model with plain values (e.g. act_layer='gelu' rather than a class)") from None
        replacements[key] = name
    return replacements


def _write_timm_config(model: torch.nn.Module, metadata: dict[str, Any], path: Path) -> None:
    """timm's config.json for ``model``: its arguments, class names, input size and normalisation."""
    data_config = dict(metadata.get("data_config") or {})
    if "img_size" in metadata:
        size = metadata["img_size"]
        data_config["input_size"] = (metadata["in_chans"], *((size, size) if isinstance(size, int) else size))
    model_config = {"label_names": list(metadata["class_names"])} if metadata.get("class_names") else {}
    try:
        save_config_for_hf(model, str(path), model_config=model_config, model_args=_serializable_arguments(model),
                           data_config=data_config)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"timm cannot describe this model in {TIMM_CONFIG}: {exc}") from None


def _new_checkpoint_directory(run_dir: Path, epoch: int) -> Path:
    """``<run>/checkpoints/epoch-NNNN``; an epoch written again after resuming from an earlier checkpoint gets a
    new name (``epoch-NNNN-1``, ...): the old one may be what ``last``/``best`` point at."""
    checkpoints = make_directory(run_dir / "checkpoints")
    final, again = checkpoints / f"epoch-{epoch:04d}", 0
    while final.exists():
        again += 1
        final = checkpoints / f"epoch-{epoch:04d}-{again}"
    return final


def save_checkpoint(run_dir: str | os.PathLike, epoch: int, model: torch.nn.Module, metadata: dict[str, Any],
                    state: dict[str, Any], ema: torch.nn.Module | None = None) -> Path:
    """Write checkpoint ``epoch`` of a run atomically and return its directory (``last`` is not moved).

    Weights with a NaN or infinite value are refused (nothing is written). For a model built by timm, the
    :data:`TIMM_FACTS` of ``metadata`` go to timm's config.json; the rest goes to the weights' header.
    """
    weights = {WEIGHTS: _plain_state_dict(model)}
    if ema is not None:
        weights[EMA_WEIGHTS] = _plain_state_dict(ema)
    for name, tensors in weights.items():
        check_finite(tensors, f"the {name} of epoch {epoch}", "no checkpoint is written for a diverged model")
    describe = describes_itself(model)
    header = {"format": FORMAT, **{key: json.dumps(value) for key, value in metadata.items()
                                   if not (describe and key in TIMM_FACTS)}}
    final = _new_checkpoint_directory(Path(run_dir), epoch)
    with atomic_directory(final) as staging:
        for name, tensors in weights.items():
            write_bytes_durable(staging / name, save(tensors, metadata=header))
        write_bytes_durable(staging / STATE, _torch_bytes(state))
        if describe:
            _write_timm_config(model, metadata, staging / TIMM_CONFIG)
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
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"a checkpoint path is a str or Path, got {type(path).__name__}")
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


def run_directory(checkpoint_dir: str | os.PathLike) -> Path:
    """The run folder holding checkpoint directory ``checkpoint_dir`` (``<run>/checkpoints/epoch-N``)."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.parent.name != "checkpoints":
        raise InvalidValueError(f"{checkpoint_dir} is not inside a run folder (<run>/checkpoints/epoch-N); pass "
                                "--output to say where the continued run goes")
    return checkpoint_dir.parent.parent


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
    metadata = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    config_file = Path(weights_file).parent / TIMM_CONFIG
    return {**metadata, **_timm_facts(config_file)} if config_file.is_file() else metadata


def _timm_facts(config_file: Path) -> dict[str, Any]:
    """The :data:`TIMM_FACTS` of a checkpoint, read from timm's config.json."""
    try:
        config = json.loads(config_file.read_text())
        pretrained = config["pretrained_cfg"]
        arguments = dict(config.get("model_args", {}))
        in_chans, *size = pretrained["input_size"]
        facts = dict(model=config["architecture"], num_classes=config["num_classes"], in_chans=in_chans,
                     img_size=size[0] if size[0] == size[1] else size,
                     data_config={k: pretrained[k] for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode")
                                  if k in pretrained})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidValueError(f"{config_file} is not a readable timm config ({type(exc).__name__}: {exc}); "
                                "the checkpoint is damaged, use another one") from None
    facts["model_kwargs"] = {k: v for k, v in arguments.items() if k not in ("num_classes", "in_chans")}
    if "label_names" in config:
        facts["class_names"] = list(config["label_names"])
    return facts


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
