"""Training settings that were silently ignored or crashed deep inside torch: each now works as it says or is
refused in one line; unreadable images never stop an epoch."""
import io

import pytest
import torch
from PIL import Image

from patnet.engine import builders, make_config, resume_config, train
from patnet.engine import checkpoint as ckpt
from patnet.errors import UserError

TINY = dict(model="test_efficientnet", dataset="synthetic", img_size=32, batch_size=16, lr=5e-3, warmup_epochs=0,
            smoothing=0.0, hflip=0.0, no_aug=True)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("overrides, message", [
    (dict(lr=float("inf")), r"--lr inf is invalid: expected a finite number"),
    (dict(lr=float("nan")), r"--lr nan is invalid: expected a finite number"),
    (dict(weight_decay=float("inf")), r"--weight-decay inf is invalid"),
    (dict(clip_grad=float("nan")), r"--clip-grad nan is invalid"),
    (dict(min_lr=-1.0), r"--min-lr -1.0 is invalid: expected a learning rate >= 0"),
    (dict(warmup_lr=-1e-5), r"--warmup-lr -1e-05 is invalid"),
    (dict(momentum=-1.0), r"--momentum -1.0 is invalid: expected a number in \[0, 1\)"),
    (dict(momentum=1.0), r"--momentum 1.0 is invalid"),
    (dict(momentum=0.9, opt="adagrad"), r"--momentum does not apply to --opt adagrad, which has neither momentum nor "
                                        r"betas; drop --momentum"),
    (dict(opt="adamx"), r"--opt 'adamx' is not a timm optimizer"),
    (dict(sched="plateau"), r"--sched 'plateau' is invalid: choose one of cosine"),
    (dict(sched="none"), r"--sched 'none' is invalid"),
    (dict(sched="wsd", warmup_epochs=2, epochs=2), r"--sched wsd needs --warmup-epochs \(2\) below --epochs \(2\)"),
    (dict(seed=-1), r"--seed -1 is invalid: expected an integer in \[0, 2\*\*31\)"),
    (dict(epochs="3"), r"--epochs '3' is invalid: expected an integer"),
    (dict(batch_size=16.0), r"-b/--batch-size 16.0 is invalid: expected an integer"),
    (dict(amp="yes"), r"--amp 'yes' is invalid: expected True or False"),
    (dict(lr="fast"), r"--lr 'fast' is invalid: expected a number or None"),
    (dict(model_kwargs={"act_layer": torch.nn.GELU}), r"--model-kwargs .* expected plain values .* rather than a "
                                                      r"class"),
    (dict(model_kwargs=["n_div=4"]), r"--model-kwargs \['n_div=4'\] is invalid: expected a dict"),
])
def test_bad_training_settings_are_one_line(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message) as info:
        make_config(**overrides)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)


def _optimizer(**overrides):
    config = make_config(**dict(TINY, **overrides))
    return builders.build_optimization(config, torch.nn.Linear(2, 2), 16, 8)[0]


def test_momentum_is_beta1_for_adam_like_optimizers_and_momentum_for_sgd_like_ones():
    assert _optimizer(opt="adamw", momentum=0.8).defaults["betas"] == (0.8, 0.999)  # was ignored
    assert _optimizer(opt="lamb", momentum=0.7).defaults["betas"][0] == 0.7
    assert _optimizer(opt="sgd", momentum=0.5).defaults["momentum"] == 0.5
    # left out: each optimizer's own default
    assert _optimizer(opt="adamw").defaults["betas"] == (0.9, 0.999)
    assert _optimizer(opt="sgd").defaults["momentum"] == 0.9


def test_an_optimizer_torch_refuses_is_one_line():
    with pytest.raises(UserError, match=r"--opt sgd / --sched cosine cannot be set up with these values: .*Nesterov"):
        _optimizer(opt="sgd", momentum=0.0)  # timm's sgd is Nesterov, which needs a momentum


def _as_written_before_momentum_became_optional(run) -> None:
    """Rewrite ``run``'s last training state as older versions stored it: momentum 0.9, no config version."""
    state_file = (run / "last").resolve() / ckpt.STATE
    state = torch.load(state_file, weights_only=True)
    state["config"]["momentum"] = 0.9
    del state["config_version"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state_file.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("opt", ["adagrad", "adamw"])  # neither momentum nor betas; betas: timm ignored 0.9
def test_old_configs_with_the_former_momentum_default_still_resume_as_the_same_run(tmp_path, opt):
    train(make_config(epochs=1, output=str(tmp_path), **dict(TINY, opt=opt)))
    _as_written_before_momentum_became_optional(tmp_path)
    config = resume_config(tmp_path, epochs=2)
    assert config.momentum is None
    assert [row["epoch"] for row in train(config, resume=tmp_path)] == [1, 2]


def test_a_momentum_chosen_today_is_kept_on_resume(tmp_path):
    train(make_config(epochs=1, output=str(tmp_path), **dict(TINY, momentum=0.8)))
    assert resume_config(tmp_path, epochs=2).momentum == 0.8


def _image_folder(root, truncated: str):
    """train/ and val/ with two classes of small JPEGs; ``truncated`` names a training file cut in half."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 16), ("val", 4)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(24, 24, 3, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{i:02d}.jpg", quality=90)
    data = (root / truncated).read_bytes()
    (root / truncated).write_bytes(data[:len(data) // 2])  # passes the scan's verify(), fails to decode


def test_a_truncated_jpeg_is_skipped_and_counted_not_a_crash_mid_epoch(tmp_path):
    _image_folder(tmp_path / "data", "train/a/03.jpg")
    config = make_config(**dict(TINY, dataset="folder", data_dir=str(tmp_path / "data"), batch_size=8, epochs=1,
                                output=str(tmp_path / "run")))
    with pytest.warns(UserWarning, match=r"skipped unreadable image .*train/a/03.jpg \(OSError: image file is "
                                         r"truncated.*the next image takes its place \(1 skipped"):
        history = train(config)
    assert [row["epoch"] for row in history] == [1]


def test_public_functions_given_wrong_types_or_values_answer_in_one_line(tmp_path):
    from patnet.data import build_dataset, synthetic
    from patnet.engine.inference import evaluate_checkpoint, load_trained_model, predict_files
    from patnet.export import export_model, export_torchscript

    train(make_config(epochs=1, output=str(tmp_path), **TINY))
    model, meta = load_trained_model(tmp_path)
    Image.new("L", (28, 28), 90).save(tmp_path / "one.png")
    cases = [
        (lambda: train({"epochs": 1}), r"train\(\) takes a TrainConfig .* got dict"),
        (lambda: resume_config(None), r"a checkpoint path is a str or Path, got NoneType"),
        (lambda: synthetic("test"), r"split 'test' is invalid: choose 'train' or 'val'"),  # was val, silently
        (lambda: build_dataset("fashion-mnist", "test", str(tmp_path), 28), r"split 'test' is invalid"),
        (lambda: predict_files(model, meta, tmp_path / "one.png", topk=0), r"topk=0 is invalid"),  # was empty lists
        (lambda: evaluate_checkpoint(model, meta, batch_size=0), r"batch_size=0 is invalid"),
        (lambda: export_model("patnet_t0", tmp_path / "m.onnx", img_size=None), r"--img-size None is invalid"),
        (lambda: export_torchscript(model, tmp_path / "m.pt", example=[1, 2]), r"must be a batched tensor"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match=message) as info:
            call()
        assert isinstance(info.value, UserError)
    (ranking,) = predict_files(model, meta, tmp_path / "one.png", topk=2)  # one path, not a list of characters
    assert len(ranking) == 2
