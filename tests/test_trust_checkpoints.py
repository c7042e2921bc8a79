"""Checkpoints a user can trust and take anywhere: only finite ones are written or loaded, a run resumes where
it is, a failed write loses nothing, files get the user's umask, and timm loads a checkpoint folder itself."""
import errno
import json
import math
import os
import shutil

import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from patnet.cli import main
from patnet.engine import NonFiniteLossError, make_config, resume_config, train, trainer
from patnet.engine import checkpoint as ckpt
from patnet.engine.inference import evaluate_checkpoint, load_trained_model
from patnet.errors import UnwritablePathError

TINY = dict(model="test_efficientnet", dataset="synthetic", img_size=32, batch_size=16, lr=5e-3, warmup_epochs=0,
            smoothing=0.0, hflip=0.0, no_aug=True)
# A small PATNet, so that config.json describes one of ours (its arguments, its activation) end to end.
TINY_PATNET = dict(TINY, model="patnet_t0", patch_size=2, model_kwargs=dict(embed_dim=8, depths=(1, 1, 1, 1),
                                                                           feature_dim=16, act_layer="relu"))
COMPARED = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr")

pytestmark = pytest.mark.usefixtures("one_thread")


def compared(history):
    return [{k: row[k] for k in COMPARED} for row in history]


def run_main(capsys, *argv):
    """`patnet ...` in-process: the exit code and stderr's lines."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def patnet_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("patnet-run")
    torch.set_num_threads(1)
    train(make_config(epochs=1, output=str(output), **TINY_PATNET))
    return output


# --- only finite checkpoints -------------------------------------------------------------------------------

def test_weights_that_diverge_at_an_epoch_end_stop_the_run_before_any_checkpoint_of_them(tmp_path, monkeypatch):
    real_epoch = trainer.Run.train_one_epoch

    def diverging_in_epoch_two(self, epoch):
        result = real_epoch(self, epoch)
        if epoch == 1:  # the logged losses stayed finite, the last update did not
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(trainer.Run, "train_one_epoch", diverging_in_epoch_two)
    with pytest.raises(NonFiniteLossError, match=r"diverged in epoch 2: 1 weight tensors hold NaN or infinite "
                                                 r"values; no checkpoint was written for it\. The last good "
                                                 r"checkpoint, .*last \(epoch 1\), is kept"):
        train(make_config(epochs=3, output=str(tmp_path), **TINY))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001"]
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 1
    model, meta = load_trained_model(tmp_path)
    assert meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_a_non_finite_validation_loss_writes_nothing(tmp_path, monkeypatch):
    real_evaluate = trainer.evaluate

    def nan_loss(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        result.loss = float("nan")
        return result

    monkeypatch.setattr(trainer, "evaluate", nan_loss)
    with pytest.raises(NonFiniteLossError, match="diverged in epoch 1: the validation loss is nan.*No checkpoint"):
        train(make_config(epochs=1, output=str(tmp_path), **TINY))
    assert not (tmp_path / "last").exists() and not (tmp_path / "checkpoints").exists()


def test_a_really_diverging_run_leaves_only_checkpoints_that_evaluate_finite(tmp_path):
    # lr 300 here: epoch 1 ends with a NaN validation loss (before this check, a "good" checkpoint evaluating to
    # "loss nan"), higher rates with a NaN training loss.
    with pytest.raises(NonFiniteLossError, match="Lower --lr"):
        train(make_config(epochs=3, output=str(tmp_path), **dict(TINY, lr=300.0)))
    for directory in (tmp_path / "checkpoints").glob("epoch-*"):
        model, meta = load_trained_model(directory)
        assert math.isfinite(evaluate_checkpoint(model, meta).loss)


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(ValueError, match="1 of 2 tensors hold NaN or infinite values"):
        ckpt.save_checkpoint(tmp_path, 1, model, {}, {"epoch": 1})
    assert not (tmp_path / "checkpoints").exists()


def test_eval_and_predict_refuse_non_finite_weights(patnet_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(patnet_run, run, symlinks=True)
    weights = run / "last" / ckpt.WEIGHTS
    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata()
    tensors = ckpt.load_weights(weights)
    poisoned = [k for k, v in tensors.items() if v.is_floating_point()][:3]
    for key in poisoned:
        tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, weights, metadata=header)  # what a diverged run wrote before this check existed
    Image.new("L", (32, 32), 100).save(tmp_path / "grey.png")
    for argv in (["eval", "--checkpoint", run], ["predict", tmp_path / "grey.png", "--checkpoint", run]):
        code, lines = run_main(capsys, *argv)
        assert code == 2 and len(lines) == 1, lines
        assert f"3 of {len(tensors)} tensors hold NaN or infinite values (the run diverged)" in lines[0]
        assert "use an earlier checkpoint" in lines[0]


# --- a run resumes where it is -----------------------------------------------------------------------------

def test_a_moved_run_resumes_in_its_new_place(tmp_path, capsys):
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    assert main(["train", "--model", "test_efficientnet", "--dataset", "synthetic", "--img-size", "32", "-b", "16",
                 "--warmup-epochs", "0", "--no-aug", "--epochs", "1", "--output", str(run_a)]) == 0
    shutil.move(run_a, run_b)
    assert main(["train", "--resume", str(run_b), "--epochs", "2"]) == 0
    assert not run_a.exists()
    assert (run_b / "last").resolve().name == "epoch-0002"
    assert [row["epoch"] for row in json.loads((run_b / "metrics.json").read_text())] == [1, 2]
    capsys.readouterr()


@pytest.mark.parametrize("where", [".", "last", "best", "checkpoints/epoch-0001"])
def test_every_path_into_a_run_resumes_into_that_run(patnet_run, where):
    assert resume_config(patnet_run / where, epochs=2).output == str(patnet_run.resolve())


def test_an_explicit_output_continues_the_run_in_a_new_folder(patnet_run, tmp_path):
    config = resume_config(patnet_run / "best", epochs=2, output=str(tmp_path / "continued"))
    train(config, resume=patnet_run / "best")
    assert (tmp_path / "continued" / "last").resolve().name == "epoch-0002"
    assert (patnet_run / "last").resolve().name == "epoch-0001"


def test_resuming_a_finished_run_without_more_epochs_says_how_to_train_more(patnet_run, capsys):
    code, lines = run_main(capsys, "train", "--resume", patnet_run, "--epochs", "1")
    assert code == 2 and lines[-1].startswith("patnet train: error: checkpoint ")
    assert "has already trained 1 epoch(s) and --epochs is 1: nothing to do; pass --epochs N with N > 1" in lines[-1]


# --- timm's config.json ------------------------------------------------------------------------------------

def test_a_checkpoint_folder_loads_with_timm_itself(patnet_run):
    model, meta = load_trained_model(patnet_run / "best")
    loaded = timm.create_model(f"local-dir:{patnet_run / 'best'}", pretrained=True).eval()
    cfg = loaded.pretrained_cfg
    assert (loaded.num_classes, cfg["label_names"]) == (4, ["class_0", "class_1", "class_2", "class_3"])
    assert tuple(cfg["input_size"]) == (1, 32, 32) and (tuple(cfg["mean"]), tuple(cfg["std"])) == ((0.5,), (0.25,))
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["model_kwargs"]["act_layer"] == "relu" and meta["class_names"] == cfg["label_names"]


def test_each_fact_is_stored_once(patnet_run):
    directory = patnet_run / "last"
    with safe_open(str(directory / ckpt.WEIGHTS), framework="pt") as f:
        header = f.metadata()
    config = json.loads((directory / ckpt.TIMM_CONFIG).read_text())
    assert not set(header) & set(ckpt.TIMM_FACTS)  # what config.json holds, the header does not repeat
    assert {"dataset", "epoch", "top1", "format"} <= set(header)
    assert config["architecture"] == "patnet_t0" and config["model_args"]["depths"] == [1, 1, 1, 1]


def test_checkpoints_with_every_fact_in_the_header_still_load(patnet_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(patnet_run / "last", old)
    meta = ckpt.read_metadata(old / ckpt.WEIGHTS)
    header = {"format": ckpt.FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    save_file(ckpt.load_weights(old / ckpt.WEIGHTS), old / ckpt.WEIGHTS, metadata=header)
    (old / ckpt.TIMM_CONFIG).unlink()
    model, old_meta = load_trained_model(old)
    assert old_meta == meta and model.num_classes == 4


def test_activation_classes_are_stored_by_their_timm_name(tmp_path):
    model = timm.create_model("patnet_t0", num_classes=2, in_chans=1, act_layer=torch.nn.GELU, embed_dim=8,
                              depths=(1, 1, 1, 1), feature_dim=16)
    directory = ckpt.save_checkpoint(tmp_path, 1, model, dict(model="patnet_t0", num_classes=2, in_chans=1,
                                                              class_names=["a", "b"], img_size=32), {})
    assert json.loads((directory / ckpt.TIMM_CONFIG).read_text())["model_args"]["act_layer"] == "gelu"
    rebuilt = timm.create_model(f"local-dir:{directory}", pretrained=True)
    assert torch.equal(rebuilt.eval()(torch.ones(1, 1, 32, 32)), model.eval()(torch.ones(1, 1, 32, 32)))


# --- faults while writing: one line, nothing lost, the run resumes -----------------------------------------

def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_the_run_resumes(tmp_path, monkeypatch):
    reference = train(make_config(epochs=3, output=str(tmp_path / "reference"), **TINY))
    real_write = ckpt.write_bytes_durable

    def disk_full_in_epoch_two(path, data):
        if "epoch-0002" in str(path) and path.name == ckpt.STATE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_durable", disk_full_in_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(UnwritablePathError) as info:
        train(make_config(epochs=3, output=str(run), **TINY))
    message = str(info.value)
    assert "\n" not in message and "no space is left on the device; free some space" in message
    assert f"cannot write {run}/checkpoints/epoch-0002" in message and "(epoch 1), is kept" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001"]  # no half-written folder
    _, meta = load_trained_model(run)
    assert meta["epoch"] == 1

    monkeypatch.setattr(ckpt, "write_bytes_durable", real_write)  # space was freed
    resumed = train(resume_config(run), resume=run)
    assert compared(resumed) == compared(reference)


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    code, lines = run_main(capsys, "train", "--model", "test_efficientnet", "--dataset", "synthetic", "--img-size",
                           "32", "-b", "16", "--epochs", "1", "--output", tmp_path / "taken" / "run")
    assert code == 2 and len(lines) == 1
    assert lines[0] == (f"patnet train: error: cannot write {tmp_path}/taken/run: {tmp_path}/taken is a file, not "
                        "a folder; remove that file or choose another path")


@pytest.mark.parametrize("fault, words", [(errno.EACCES, "permission denied; choose a folder you can write to"),
                                          (errno.EROFS, "the file system is read-only; choose a writable location")])
def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch, fault, words):
    real_mkdir = os.mkdir

    def refused(path, *args, **kwargs):  # as a read-only folder (or file system) answers, even to root
        if str(path).startswith(str(tmp_path / "locked")):
            raise OSError(fault, os.strerror(fault), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    code, lines = run_main(capsys, "train", "--model", "test_efficientnet", "--dataset", "synthetic", "--img-size",
                           "32", "-b", "16", "--epochs", "1", "--output", tmp_path / "locked" / "run")
    assert code == 2 and len(lines) == 1 and words in lines[0] and f"{tmp_path}/locked" in lines[0]


# --- the user's umask ---------------------------------------------------------------------------------------

@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_checkpoint_files_get_the_users_umask(tmp_path, umask_027):
    train(make_config(epochs=1, output=str(tmp_path), **TINY))
    directory = (tmp_path / "last").resolve()
    assert oct(directory.stat().st_mode & 0o777) == oct(0o750)
    for name in (ckpt.WEIGHTS, ckpt.STATE, ckpt.TIMM_CONFIG):
        assert oct((directory / name).stat().st_mode & 0o777) == oct(0o640), name
    for name in ("metrics.json", "metrics.csv", "curves.png"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o640), name
