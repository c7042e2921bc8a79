"""`patnet train/eval/predict/export` with bad input: an argparse-style or one-line error (exit 2), or a run that
does what it says; never a traceback from inside torch or timm, never a silently wrong file.

The property tests draw values (numbers, nonsense, extremes) for the numeric flags of each command.
"""
import os

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from patnet.cli import main
from patnet.engine import make_config, train
from patnet.engine.inference import load_trained_model

TINY_FLAGS = ["--model", "test_efficientnet", "--dataset", "synthetic", "--img-size", "32", "-b", "16",
              "--warmup-epochs", "0", "--no-aug", "--epochs", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run_main(capsys, *argv):
    """`patnet ...` in-process: the exit code (0 for a run) and stdout and stderr's lines."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err.strip().splitlines()


def assert_one_line_error(command, code, err, words):
    """Exit 2 with the message on the last line of stderr; a UserError prints nothing else."""
    assert code == 2 and err, err
    assert err[-1].startswith(f"patnet {command}: error: ") and words in err[-1], err
    assert len(err) == 1 or err[0].startswith("usage:"), err  # argparse's own errors add the usage line


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch run of a small PATNet on the 4-class grayscale synthetic set."""
    output = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    train(make_config(model="patnet_t0", dataset="synthetic", img_size=32, batch_size=16, epochs=1,
                      warmup_epochs=0, no_aug=True, patch_size=2, output=str(output),
                      model_kwargs=dict(embed_dim=8, depths=(1, 1, 1, 1), feature_dim=16)))
    return output


@pytest.mark.parametrize("argv, words", [
    (["train", "--model-kwargs", "n_div"], "argument --model-kwargs: 'n_div' is not KEY=VALUE"),
    (["train", "--model-kwargs", "=4"], "is not KEY=VALUE"),
    (["train", "--min-lr", "-1"], "--min-lr -1.0 is invalid: expected a learning rate >= 0"),
    (["train", "--warmup-lr", "-1"], "--warmup-lr -1.0 is invalid"),
    (["train", "--lr", "inf"], "--lr inf is invalid: expected a finite number"),
    (["train", "--lr", "nan"], "--lr nan is invalid: expected a finite number"),
    (["train", "--momentum", "-1"], "--momentum -1.0 is invalid: expected a number in [0, 1)"),
    (["train", "--momentum", "0.9", "--opt", "adagrad"], "--momentum does not apply to --opt adagrad"),
    (["train", "--device", "bogus"], "unknown device 'bogus'; use auto, cpu, cuda or cuda:N"),
    (["train", "--epochs", "1e3"], "argument --epochs: invalid int value: '1e3'"),
    (["train", "--sched", "plateau"], "--sched 'plateau' is invalid"),
    (["train", "--opt", "adamx"], "--opt 'adamx' is not a timm optimizer"),
    (["eval", "--checkpoint", "x", "-j", "-1"], "-j/--workers -1 is invalid"),
    (["eval", "--checkpoint", "x", "--output", ""], "--output '' is invalid: expected a folder name"),
    (["train", "--output", " "], "--output ' ' is invalid: expected a folder name"),  # was the current folder
    (["train", "-j", "100000"], "-j/--workers 100000 is invalid: expected an integer in [0, "),  # hung
    (["predict", "/nonexistent.png", "--checkpoint", "x"], "image /nonexistent.png does not exist"),
    (["export", "--model", "patnet_t0", "--output", "x.onnx", "--img-size", "100000", "100000"],
     "exporting at 100000x100000 needs at least"),
    (["export", "--model", "patnet_t0", "--output", "x.onnx", "--img-size", "0", "64"], "--img-size 0 64 is invalid"),
    (["export", "--model", "patnet_t0", "--output", "x.onnx", "--in-chans", "0"], "--in-chans 0 is invalid"),
    (["export", "--model", "patnet_t0", "--output", "x.onnx", "--num-classes", "-1"],
     "--num-classes -1 is invalid: expected an integer >= 0 (0: the pooled features"),
    (["export", "--output", "x.onnx"], "pass --model NAME, or --checkpoint with a `patnet train` checkpoint"),
    (["export", "--model", "test_vit3", "--output", "x.pt", "--img-size", "100", "100"],
     "the model cannot take 100x100 inputs"),
])
def test_bad_flags_are_one_line(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it would land here
    code, _, err = run_main(capsys, *argv)
    assert_one_line_error(argv[0], code, err, words)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(capsys):
    code, _, err = run_main(capsys, "eval", "--checkpoint", "x", "--device", "cuda")
    assert_one_line_error("eval", code, err, "no usable CUDA GPU")


def test_a_random_bytes_checkpoint_gets_a_complete_message(capsys, tmp_path):
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "code.pth").write_bytes(b"\x80\x02crandom\nshuffle\nq\x00.")  # a pickle that imports a function
    for argv, ending in [
        (["export", "--model", "patnet_t0", "--checkpoint", "random.pth"], "pass a state dict saved with torch.save "
                                                                           "or a .safetensors file"),
        (["export", "--model", "patnet_t0", "--checkpoint", "code.pth"], "re-save it as a state dict or as "
                                                                         "safetensors"),
        (["eval", "--checkpoint", "random.pth"], "it may be truncated or of another format"),
    ]:
        code, _, err = run_main(capsys, *[a if not a.endswith(".pth") else tmp_path / a for a in argv],
                                *(["--output", tmp_path / "m.onnx"] if argv[0] == "export" else []))
        assert_one_line_error(argv[0], code, err, str(tmp_path))
        assert err[-1].endswith(ending), err[-1]


def test_predict_takes_a_folder_of_images(capsys, trained, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, grey in (("b.png", 30), ("a.png", 200), ("c.jpg", 120)):
        Image.new("L", (28, 28), grey).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    code, out, _ = run_main(capsys, "predict", folder, "--checkpoint", trained, "--topk", "2")
    assert code == 0 and out[0] == f"{folder}: 3 image file(s), in name order"
    assert [line for line in out[1:] if not line.startswith(" ")] == [str(folder / n) for n in ("a.png", "b.png",
                                                                                                 "c.jpg")]
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(capsys, "predict", tmp_path / "empty", "--checkpoint", trained)
    assert_one_line_error("predict", code, err, "holds no image files")


# --- export with a checkpoint: its own head and channels win -----------------------------------------------

@pytest.mark.parametrize("where", [".", "best", "checkpoints/epoch-0001", "last/model.safetensors"])
def test_export_takes_a_training_checkpoint_without_model(capsys, trained, tmp_path, where):
    code, _, err = run_main(capsys, "export", "--checkpoint", trained / where, "--output", tmp_path / "m.onnx",
                              "--img-size", "32", "32")
    assert code == 0, err
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, 32, 32]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 4]


@pytest.mark.parametrize("flags, words", [
    (["--num-classes", "7"], "--num-classes 7 contradicts the checkpoint"),  # was a random 7-way head
    (["--in-chans", "3"], "--in-chans 3 contradicts the checkpoint"),
    (["--model", "patnet_t1"], "holds a patnet_t0 model, not patnet_t1; drop --model or pass --model patnet_t0"),
])
def test_export_flags_may_not_contradict_a_training_checkpoint(capsys, trained, tmp_path, flags, words):
    code, _, err = run_main(capsys, "export", "--checkpoint", trained, "--output", tmp_path / "m.onnx", *flags)
    assert_one_line_error("export", code, err, words)
    assert not (tmp_path / "m.onnx").exists()


def test_export_flags_may_not_contradict_a_plain_state_dict(capsys, trained, tmp_path):
    model, _ = load_trained_model(trained)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    for flags, words in ((["--num-classes", "7"], "--num-classes 7 contradicts the checkpoint"),
                         (["--in-chans", "3"], "--in-chans 3 contradicts the checkpoint")):
        code, _, err = run_main(capsys, "export", "--model", "patnet_t0", "--checkpoint", tmp_path / "w.pth",
                                "--output", tmp_path / "m.pt", "--img-size", "32", "32", *flags)
        assert_one_line_error("export", code, err, words)
    assert not (tmp_path / "m.pt").exists()


def test_export_num_classes_zero_gives_the_pooled_features(capsys, trained, tmp_path):
    code, _, err = run_main(capsys, "export", "--checkpoint", trained, "--output", tmp_path / "f.pt", "--img-size",
                            "32", "32", "--num-classes", "0")
    assert code == 0, err
    features = torch.jit.load(str(tmp_path / "f.pt"))(torch.zeros(2, 1, 32, 32))
    model, _ = load_trained_model(trained)
    with torch.no_grad():
        torch.testing.assert_close(features, model.forward_head(model.forward_features(torch.zeros(2, 1, 32, 32)),
                                                                pre_logits=True), rtol=1e-4, atol=1e-5)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_exported_files_get_the_users_umask(capsys, tmp_path, umask_027, suffix):
    code, _, err = run_main(capsys, "export", "--model", "patnet_t0", "--output", tmp_path / f"m{suffix}",
                            "--img-size", "64", "64", "--dynamic-batch")
    assert code == 0, err
    assert oct((tmp_path / f"m{suffix}").stat().st_mode & 0o777) == oct(0o640)


# --- property: numeric flags -------------------------------------------------------------------------------

NUMBERS = st.one_of(st.sampled_from(["0", "-1", "1", "2", "0.5", "1e4", "-0.5", "nan", "inf", "-inf", "1e309",
                                     "abc", "", "3.7"]),
                    st.integers(-3, 40).map(str), st.floats(-2, 2, allow_nan=False).map(repr))
TRAIN_FLAGS = ["--lr", "--lr-base", "--momentum", "--weight-decay", "--clip-grad", "--warmup-epochs",
               "--warmup-lr", "--min-lr", "--smoothing", "--mixup", "--cutmix", "--hflip", "--drop-path",
               "--model-ema-decay", "--epochs", "-b", "--img-size", "--patch-size", "--seed", "-j"]
EXPORT_FLAGS = ["--img-size", "--in-chans", "--num-classes"]
DRAWS = {"train": 0, "train ran": 0, "export": 0, "export ran": 0}


def _bounded(flag: str, value: str) -> str:
    """Keep a run short: at most 2 epochs, batches of at most 64, images of at most 64 px (above: kept)."""
    limits = {"--epochs": 2, "-b": 64, "--img-size": 64, "-j": 0}
    try:
        number = float(value)
    except ValueError:
        return value
    if flag in limits and number > limits[flag] and number < 1e5:
        return str(limits[flag])
    return value


@settings(max_examples=18, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(TRAIN_FLAGS), value=NUMBERS)
def test_every_numeric_train_flag_draw_runs_or_is_one_line(capsys, tmp_path, flag, value):
    DRAWS["train"] += 1
    output = tmp_path / f"run{DRAWS['train']}"
    flags = list(TINY_FLAGS)
    if flag in flags:
        index = flags.index(flag)
        del flags[index:index + 2]
    code, _, err = run_main(capsys, "train", *flags, "--output", output, flag, _bounded(flag, value))
    if code == 0:
        DRAWS["train ran"] += 1
        assert (output / "last" / "model.safetensors").is_file()
    else:
        assert_one_line_error("train", code, err, "")


@settings(max_examples=12, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(EXPORT_FLAGS), value=NUMBERS, second=NUMBERS)
def test_every_numeric_export_flag_draw_runs_or_is_one_line(capsys, trained, tmp_path, flag, value, second):
    DRAWS["export"] += 1
    output = tmp_path / f"m{DRAWS['export']}.pt"
    values = [_bounded("--img-size", value), _bounded("--img-size", second)] if flag == "--img-size" else [value]
    code, _, err = run_main(capsys, "export", "--checkpoint", trained, "--output", output, flag, *values)
    if code == 0:
        DRAWS["export ran"] += 1
        assert output.is_file()
    else:
        assert_one_line_error("export", code, err, "")
        assert not output.exists()


def test_the_cli_properties_drew_runs_too():
    if not DRAWS["train"] or not DRAWS["export"]:
        pytest.skip("run with the property tests")
    print(f"CLI property draws: {DRAWS}")
    assert DRAWS["train"] > DRAWS["train ran"] >= 2 and DRAWS["export"] > DRAWS["export ran"] >= 1, DRAWS
