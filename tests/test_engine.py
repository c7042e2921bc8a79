"""Training engine in-process: learning, checkpoints (atomic, strict), resume checks, NaN stop, eval/predict."""
import json

import pytest
import torch
from PIL import Image

from patnet.data import build_dataset
from patnet.engine import NonFiniteLossError, builders, make_config, resume_config, train
from patnet.engine import checkpoint as ckpt
from patnet.engine.inference import evaluate_checkpoint, load_trained_model, predict_files
from patnet.models import create_model

# A ~100k-parameter timm model with batch norm: an epoch of the synthetic set takes well under a second.
TINY = dict(model="test_efficientnet", dataset="synthetic", img_size=32, batch_size=16, lr=5e-3,
            warmup_epochs=0, smoothing=0.0, hflip=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    history = train(make_config(epochs=3, output=str(output), **TINY))
    return output, history


def test_training_learns_the_synthetic_set(trained_run):
    _, history = trained_run
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["top1"] >= 90.0  # chance is 25%
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_run_directory_has_checkpoints_metrics_and_plots(trained_run):
    output, history = trained_run
    assert (output / "last").resolve().name == "epoch-0003"
    best_epoch = max(history, key=lambda row: row["top1"])["epoch"]
    assert (output / "best").resolve().name == f"epoch-{best_epoch:04d}"
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == sorted(
        {f"epoch-{best_epoch:04d}", "epoch-0003"})
    assert json.loads((output / "metrics.json").read_text()) == history
    assert (output / "metrics.csv").read_text().startswith("epoch,train_loss,val_loss,top1,top5")
    for png in ("curves.png", "confusion.png"):
        assert (output / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluating_the_last_checkpoint_reproduces_the_training_metrics(trained_run):
    output, history = trained_run
    model, meta = load_trained_model(output)
    result = evaluate_checkpoint(model, meta)
    assert (meta["model"], meta["epoch"], meta["num_classes"]) == ("test_efficientnet", 3, 4)
    assert result.top1 == history[-1]["top1"] and result.count == 128
    assert result.loss == pytest.approx(history[-1]["val_loss"], rel=1e-6)
    assert int(result.confusion.trace()) == round(result.top1 * 128 / 100)


def test_predict_names_the_top_classes(trained_run, tmp_path):
    output, _ = trained_run
    model, meta = load_trained_model(output / "best")
    dataset = build_dataset("synthetic", "val", None, 32)
    image, label = dataset.images[0], dataset.labels[0]
    Image.fromarray(image).save(tmp_path / "sample.png")
    (ranking,) = predict_files(model, meta, [tmp_path / "sample.png"], topk=5)
    assert [name for name, _ in ranking][0] == f"class_{label}"
    assert len(ranking) == 4 and sum(p for _, p in ranking) == pytest.approx(1.0, abs=1e-5)


def test_resume_refuses_another_architecture(trained_run, tmp_path):
    output, _ = trained_run
    config = resume_config(output, model="resnet10t", output=str(tmp_path))
    with pytest.raises(ValueError, match="holds a test_efficientnet model, not resnet10t"):
        train(config, resume=output)


def test_resume_refuses_a_different_class_count(trained_run, tmp_path):
    output, _ = trained_run
    for name in ("a", "b", "c"):
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (32, 32), 80).save(tmp_path / split / name / "0.png")
            Image.new("L", (32, 32), 90).save(tmp_path / split / name / "1.png")
    config = resume_config(output, dataset="folder", data_dir=str(tmp_path), batch_size=2, output=str(tmp_path))
    with pytest.raises(ValueError, match="trained on 4 classes but --dataset folder has 3"):
        train(config, resume=output)


def test_loading_weights_of_another_architecture_is_one_clear_error(trained_run):
    output, _ = trained_run
    other = create_model("resnet10t", num_classes=4, in_chans=1)
    weights = output / "last" / ckpt.WEIGHTS
    with pytest.raises(ValueError, match="do not fit ResNet: .* another architecture"):
        ckpt.load_into(other, ckpt.load_weights(weights), weights)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_criterion = builders.build_criterion
    calls = {"n": 0}

    def poisoned_after_first_epoch(config, mixing):
        loss = real_criterion(config, mixing)

        def forward(logits, targets):
            calls["n"] += 1
            value = loss(logits, targets)
            return value * float("nan") if calls["n"] > 8 else value  # 8 steps per epoch
        return forward

    monkeypatch.setattr(builders, "build_criterion", poisoned_after_first_epoch)
    with pytest.raises(NonFiniteLossError, match=r"became nan at epoch 2, step 1.*last good checkpoint.*epoch 1"):
        train(make_config(epochs=3, output=str(tmp_path), **TINY))
    assert (tmp_path / "last").resolve().name == "epoch-0001"
    model, meta = load_trained_model(tmp_path)
    assert meta["epoch"] == 1 and all(torch.isfinite(p).all() for p in model.parameters())


def test_a_crash_while_saving_leaves_last_pointing_at_a_complete_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    meta = dict(model="linear", epoch=1)
    first = ckpt.save_checkpoint(tmp_path, 1, model, meta, {"epoch": 1})
    ckpt.point(tmp_path / "last", first)
    real_write = ckpt.write_bytes_durable

    def killed_halfway(path, data):
        if path.name == ckpt.STATE:
            real_write(path, data[:len(data) // 2])
            raise KeyboardInterrupt("killed while writing")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_durable", killed_halfway)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model, dict(meta, epoch=2), {"epoch": 2})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001"]
    last = ckpt.resolve_checkpoint(tmp_path)
    assert ckpt.read_metadata(last / ckpt.WEIGHTS)["epoch"] == 1 and ckpt.load_state(last) == {"epoch": 1}


def test_writing_an_epoch_again_never_touches_the_checkpoint_last_points_at(tmp_path):
    model = torch.nn.Linear(3, 2)
    first = ckpt.save_checkpoint(tmp_path, 2, model, dict(epoch=2), {"run": 1})
    ckpt.point(tmp_path / "last", first)
    again = ckpt.save_checkpoint(tmp_path, 2, model, dict(epoch=2), {"run": 2})  # e.g. resumed from epoch 1
    assert again != first and ckpt.load_state(tmp_path / "last") == {"run": 1}
    ckpt.point(tmp_path / "last", again)
    ckpt.prune_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [again.name]


def test_weights_without_patnet_metadata_are_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not written by `patnet train`"):
        load_trained_model(tmp_path / "foreign.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_trained_model(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("overrides, message", [
    (dict(epochs=0), "--epochs 0 is invalid"),
    (dict(batch_size=1), "at least 2"),
    (dict(smoothing=1.5), "--smoothing 1.5 is invalid"),
    (dict(mixup=0.2, batch_size=15), "an even number when --mixup"),
    (dict(warmup_epochs=6, epochs=5), "--warmup-epochs 6 is invalid"),
    (dict(drop_path=-0.1), "--drop-path"),
    (dict(lr=0.0), "--lr 0.0 is invalid"),
    (dict(no_such_option=1), "unknown training option"),
    (dict(aa="garbage"), "--aa 'garbage' is invalid: expected a timm RandAugment policy"),
    (dict(aa="rand-m9-q2"), "--aa 'rand-m9-q2' is invalid"),
])
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="choose one of quick, paper-t0"):
        make_config("fast")


def test_an_image_size_the_model_cannot_take_is_refused_before_training(tmp_path):
    config = make_config(**dict(TINY, model="test_vit3", img_size=8, output=str(tmp_path)))  # fixed 160 px input
    with pytest.raises(ValueError, match="cannot take 8x8 images .*raise --img-size"):
        train(config)


def test_unknown_model_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet_nope'"):
        train(make_config(**dict(TINY, model="resnet_nope", output=str(tmp_path))))
