"""`patnet train/eval/predict` end to end: SIGKILL-and-resume equivalence, 2-process DDP, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from patnet.cli import main
from patnet.engine import checkpoint as ckpt

# One thread per process: runs compared bit for bit must use the same thread count, and the machine is shared.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TINY = ["--dataset", "synthetic", "--img-size", "32", "--warmup-epochs", "0", "--lr", "5e-3"]
# Every random source a run uses: RandAugment (python and torch RNGs), flips and crops (torch),
# Mixup/CutMix (numpy), drop path (torch); plus EMA and label smoothing.
RANDOM_EVERYTHING = ["--model", "test_efficientnet", "-b", "16", "--aa", "rand-m5-mstd0.5", "--mixup", "0.2",
                     "--cutmix", "1.0", "--drop-path", "0.1", "--model-ema", "--model-ema-decay", "0.9"]
# Values that must match exactly between runs (timings may not).
COMPARED = ("epoch", "train_loss", "val_loss", "top1", "top5", "ema_top1", "ema_top5", "lr")


def patnet(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "patnet.cli", *args], env=ENV, capture_output=True, text=True,
                          **kwargs)


def compared(run_dir):
    return [{k: row[k] for k in COMPARED if k in row} for row in json.loads((run_dir / "metrics.json").read_text())]


def last_epoch(run_dir) -> int:
    link = run_dir / "last"
    return int(link.resolve().name.split("-")[1]) if link.exists() else 0


@pytest.mark.parametrize("workers", ["0", "1"])  # in-process loading, and a worker process with its own seeds
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, workers):
    args = ["train", *TINY, *RANDOM_EVERYTHING, "--workers", workers, "--epochs", "4"]
    reference = patnet(*args, "--output", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "patnet.cli", *args, "--output", str(killed_dir)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while last_epoch(killed_dir) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # epoch 3 has just begun
    process.wait()
    killed_at = last_epoch(killed_dir)
    assert 1 <= killed_at < 4, "the run was not killed mid-training"
    for name in ("last", "best"):  # what the kill left behind is complete and loadable
        directory = ckpt.resolve_checkpoint(killed_dir / name)
        ckpt.load_state(directory), ckpt.load_weights(directory / ckpt.WEIGHTS)

    resumed = patnet("train", "--resume", str(killed_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert f"epochs {killed_at + 1}..4" in resumed.stdout
    assert compared(killed_dir) == compared(tmp_path / "reference")
    for weights in (ckpt.WEIGHTS, ckpt.EMA_WEIGHTS):
        expected = load_file(tmp_path / "reference" / "last" / weights)
        actual = load_file(killed_dir / "last" / weights)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected), f"{weights} differ"


# A model without batch norm: on CPU torch has no SyncBatchNorm, so per-process BN statistics would differ
# from single-process ones by design. Without BN the only differences are float summation order.
DDP_ARGS = [*TINY, "--model", "test_efficientnet_gn", "--no-aug", "--smoothing", "0", "--epochs", "2"]
DDP_RTOL = 1e-4


def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    single = patnet("train", *DDP_ARGS, "-b", "16", "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "patnet.cli", "train", *DDP_ARGS, "-b", "8", "--output", str(tmp_path / "ddp")],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es)" in ddp.stdout and ddp.stdout.count("epoch 1/2") == 1  # rank 0 alone logs
    expected, actual = compared(tmp_path / "single"), compared(tmp_path / "ddp")
    for want, got in zip(expected, actual, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert got[key] == pytest.approx(want[key], rel=DDP_RTOL), key
        assert abs(got["top1"] - want["top1"]) <= 100 / 128  # at most one of 128 images may flip


def run_main(capsys, *argv):
    """`patnet ...` in-process: the exit code and the last line of stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["train", "--data-dir", "/nonexistent"], "install it with `sudo apt-get install dataset-fashion-mnist`"),
    (["train", "--dataset", "folder", "--data-dir", "/nonexistent"], "lacks the train folder"),
    (["train", "--epochs", "0"], "--epochs 0 is invalid: expected an integer >= 1"),
    (["train", "-b", "7", "--mixup", "0.2"], "an even number when --mixup"),
    (["train", "--model", "resnet_nope"], "unknown model 'resnet_nope'"),
    (["train", "--resume", "/nonexistent"], "checkpoint /nonexistent does not exist"),
    (["eval", "--checkpoint", "/nonexistent"], "checkpoint /nonexistent does not exist"),
])
def test_bad_input_is_a_one_line_error(capsys, argv, message):
    code, line = run_main(capsys, *argv)
    assert code == 2 and message in line and line.startswith(f"patnet {argv[0]}: error:")


def test_eval_and_predict_commands(tmp_path, capsys, one_thread):
    from PIL import Image
    assert main(["train", *TINY, "--model", "test_efficientnet", "-b", "16", "--epochs", "1",
                 "--output", str(tmp_path / "run")]) == 0
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["top1"] == history[-1]["top1"] and report["images"] == 128
    assert (tmp_path / "eval" / "confusion.png").is_file()
    assert f"top1 {history[-1]['top1']:.2f}%" in capsys.readouterr().out

    Image.new("L", (28, 28), 128).save(tmp_path / "grey.png")
    assert main(["predict", str(tmp_path / "grey.png"), "--checkpoint", str(tmp_path / "run" / "best")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("grey.png") and len(lines) == 5  # 4 classes
    assert sorted(line.split()[1] for line in lines[1:]) == [f"class_{k}" for k in range(4)]

    code, line = run_main(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--model", "patnet_t0")
    assert code == 2 and "holds a test_efficientnet model, not patnet_t0" in line
