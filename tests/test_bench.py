"""The benchmark harness, runner, reports and command, on tiny models at 32 px."""
import json
import math
import sys
import time

import numpy as np
import pytest
import timm
import torch
from torch import nn

from patnet.bench import (
    BenchConfig,
    TimingStats,
    compare,
    default_baselines,
    load_accuracies,
    matmul_gflops,
    measure_latency,
    run_benchmark,
    time_alternating,
)
from patnet.bench.runner import load_deploy, plan_sections
from patnet.bench.timing import summarise
from patnet.cli import main

TINY_KWARGS = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_classes": 10}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given without a GPU")


def tiny_fasternet() -> nn.Module:
    return timm.create_model("fasternet_t0", pretrained=False, **TINY_KWARGS)


class Sleeper(nn.Module):
    """A model whose forward takes at least ``seconds``: a timing reference robust to CPU load."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x * self.scale


class InterruptAfter(nn.Module):
    """Raises KeyboardInterrupt on its ``calls``-th forward, as Ctrl-C in the middle of a run."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.conv(x)


def quick_config(**overrides) -> BenchConfig:
    settings = dict(forms=("train",), img_size=32, matmul_size=128, throughput_batch=2)
    return BenchConfig.quick(**{**settings, **overrides})


# --- harness -------------------------------------------------------------------------------------------------


def test_time_alternating_interleaves_and_rotates():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_alternating(runs, iters=4, warmup=1, per_round=2)
    assert {name: t.shape for name, t in times.items()} == {name: (2, 2) for name in "abc"}
    warmup, timed = calls[:3], calls[3:]
    assert warmup == ["a", "b", "c"]
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a"]


def test_time_alternating_rejects_bad_counts():
    with pytest.raises(ValueError, match="multiple"):
        time_alternating({"a": lambda: None}, iters=5, warmup=0, per_round=2)
    with pytest.raises(ValueError, match="iters must be a positive integer"):
        time_alternating({"a": lambda: None}, iters=0, warmup=0)


def test_statistics_and_ratios_from_known_times():
    stats = TimingStats.from_seconds(np.arange(1, 12) / 1e3)  # 1..11 ms
    assert (stats.n, stats.median_ms, stats.mean_ms, stats.p10_ms, stats.p90_ms) == (11, 6.0, 6.0, 2.0, 10.0)
    assert stats.iqr_ms == pytest.approx(5.0)
    assert stats.images_per_s(batch_size=3) == pytest.approx(500.0)
    model = np.array([[1.0, 9.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 9.0]])  # per-round medians 1, 2, 3
    base = np.array([[2.0], [8.0], [3.0]])
    _, ratios = summarise({"m": model, "b": base}, {"m": "b"})
    assert ratios["m"].median == pytest.approx(0.5)  # median of 0.5, 0.25, 1.0
    assert ratios["m"].rounds == 3 and ratios["m"].baseline == "b"


def test_compare_measures_the_slower_model_as_slower():
    result = compare({"fast": Sleeper(0.002), "slow": Sleeper(0.006)}, baseline="fast", input_size=(1, 2, 2),
                     warmup=1, iters=8, per_round=2)
    assert set(result.ratios) == {"slow"}
    assert 2.0 < result.ratios["slow"].median < 4.5
    assert result.stats["fast"].median_ms >= 2.0 and result.complete
    assert (result.threads, result.precision, result.memory_format) == (1, "float32", "NCHW")


def test_measure_latency_and_matmul_ceiling():
    model = tiny_fasternet()
    stats = measure_latency(model, input_size=(3, 32, 32), warmup=1, iters=3)
    assert stats.n == 3 and 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert not model.training
    gflops = matmul_gflops(threads=1, size=128, iters=2)
    assert math.isfinite(gflops) and gflops > 0


def test_gpu_style_timing_runs_on_cpu_without_touching_the_model():
    """AMP, channels-last and block timing (the GPU sections' settings) exercised on the CPU."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    result = compare({"m": model}, input_size=(3, 16, 16), batch_size=2, amp_dtype="bfloat16",
                     channels_last=True, time_each_call=False, warmup=1, iters=4, per_round=2)
    assert (result.precision, result.memory_format, result.stats["m"].n) == ("amp bfloat16", "channels_last", 2)
    assert model.training and model[0].weight.is_contiguous()  # timed a converted copy


def test_gpu_sections_are_planned_when_cuda_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("patnet.bench.timing._device_memory", lambda device: 80 * 2**30)
    sections = {s.key: s for s in plan_sections(BenchConfig(gpu_batch=64, amp_dtype="bfloat16"))}
    fp32, amp = sections["gpu_fp32"], sections["gpu_amp"]
    assert (fp32.device, fp32.batch_size, fp32.amp_dtype, fp32.channels_last) == ("cuda", 64, None, False)
    assert (amp.amp_dtype, amp.channels_last, amp.kind) == ("bfloat16", True, "throughput")
    assert not any(key.startswith("gpu") for key in (s.key for s in plan_sections(BenchConfig(gpu=False))))


def test_compare_restores_thread_count():
    before = torch.get_num_threads()
    compare({"m": nn.Conv2d(3, 3, 1)}, input_size=(3, 8, 8), threads=1, warmup=0, iters=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(threads=10_000), "thread count must be between 1 and"),
    (dict(baseline="missing"), "not among the models"),
    (dict(amp_dtype="float64"), "amp_dtype"),
    (dict(batch_size=10**9), "use a smaller batch size"),
])
def test_compare_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compare({"m": nn.Conv2d(3, 3, 1)}, input_size=(3, 8, 8), iters=1, warmup=0, **kwargs)


@NO_CUDA
def test_gpu_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA"):
        compare({"m": nn.Conv2d(3, 3, 1)}, device="cuda", iters=1, warmup=0)
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(quick_config(gpu=True), models={"m": nn.Conv2d(3, 3, 1)}, progress=False)


# --- runner and outputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (dict(forms=("folded",)), "forms must be among train, deploy"),
    (dict(baseline="resnet18"), "baseline 'resnet18' is not among the given models"),
])
def test_run_benchmark_rejects_bad_requests(overrides, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(quick_config(**overrides), models={"m": nn.Conv2d(3, 3, 1)}, progress=False)


def test_default_baselines_pair_patnet_with_fasternet():
    names = ["patnet_t0", "patnet_t1", "fasternet_t0", "resnet18"]
    assert default_baselines(names) == {"patnet_t0": "fasternet_t0"}
    assert default_baselines(names, fallback="resnet18") == {
        "patnet_t0": "fasternet_t0", "patnet_t1": "resnet18", "fasternet_t0": "resnet18"}


def test_quick_run_writes_valid_json_markdown_and_png(tmp_path):
    import matplotlib.image

    models = {"patnet_t0": tiny_fasternet(), "fasternet_t0": tiny_fasternet()}
    accuracy = tmp_path / "acc.json"
    accuracy.write_text(json.dumps({"patnet_t0": 71.0, "fasternet_t0": 70.0}))
    results = run_benchmark(quick_config(), tmp_path / "out", models=models, accuracy_file=accuracy,
                            progress=False)

    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["header"]["finished"] and not saved["header"]["interrupted"]
    assert saved["models"]["patnet_t0"]["baseline"] == "fasternet_t0"
    assert saved["models"]["patnet_t0"]["accuracy"] == 71.0
    assert [s["key"] for s in saved["sections"]] == ["cpu_latency_1t", "cpu_throughput"]
    for section in saved["sections"]:
        assert section["complete"]
        entry = section["results"]["patnet_t0"]["train"]
        assert entry["n"] == section["iters"] and entry["median_ms"] > 0
        assert entry["ratio"]["baseline"] == "fasternet_t0" and entry["ratio"]["median"] > 0
        assert section["results"]["fasternet_t0"]["train"]["ratio"] is None
    assert saved["header"]["matmul_gflops"]["1"] > 0

    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "## Summary" in markdown and "## CPU latency, batch 1, 1 thread" in markdown
    assert "| patnet_t0 | train | fasternet_t0 |" in markdown and "![latency plot](bench.png)" in markdown
    image = matplotlib.image.imread(tmp_path / "out" / "bench.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0


def test_interrupted_run_keeps_what_it_measured(tmp_path):
    models = {"a": InterruptAfter(calls=40), "b": nn.Conv2d(3, 4, 3)}
    config = quick_config(warmup=1, iters=60, per_round=1)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, tmp_path, models=models, progress=False, save_every_s=0)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["header"]["interrupted"] and saved["header"]["finished"] is None
    assert set(saved["models"]) == {"a", "b"}
    (section,) = saved["sections"]
    assert not section["complete"] and 0 < section["rounds"] < section["rounds_planned"]
    assert section["results"]["a"]["train"]["n"] == section["rounds"]
    assert "partial" in (tmp_path / "bench.md").read_text()


def test_deploy_form_needs_patnet_deploy(monkeypatch):
    monkeypatch.setitem(sys.modules, "patnet.deploy", None)  # as if the module did not exist
    with pytest.raises(ValueError, match="--forms train"):
        load_deploy()


def test_deploy_form_is_measured_when_available(tmp_path):
    pytest.importorskip("patnet.deploy")
    models = {"fasternet_t0": tiny_fasternet()}
    results = run_benchmark(quick_config(forms=("train", "deploy")), models=models, progress=False)
    latency = results["sections"][0]["results"]["fasternet_t0"]
    assert set(latency) == {"train", "deploy"} and latency["deploy"]["median_ms"] > 0


def test_accuracy_files(tmp_path):
    csv_file = tmp_path / "results.csv"
    csv_file.write_text("model,img_size,top1,top5\nfasternet_t0,224,71.9,90.3\n")
    assert load_accuracies(csv_file) == {"fasternet_t0": 71.9}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_accuracies(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_accuracies(tmp_path / "missing.csv")


# --- command line --------------------------------------------------------------------------------------------


def test_cli_quick_run(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["bench", "fasternet_t0", "resnet10t", "--baseline", "resnet10t", "--quick", "--forms", "train",
            "--img-size", "32", "--model-kwargs", json.dumps({"num_classes": 10}), "--throughput-batch", "2",
            "--matmul-size", "128", "--out-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "fasternet_t0" in printed and "resnet10t" in printed and "wrote bench.json" in printed
    saved = json.loads((out / "bench.json").read_text())
    assert saved["header"]["command"].startswith("patnet bench fasternet_t0 resnet10t --baseline resnet10t")
    assert saved["header"]["config"]["iters"] == BenchConfig.quick().iters
    assert saved["models"]["fasternet_t0"]["baseline"] == "resnet10t"
    assert (out / "bench.md").is_file() and (out / "bench.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["patnet_t9"], "unknown model 'patnet_t9'; did you mean"),
    (["fasternet_t0", "--latency-batch", "0"], "batch size must be at least 1"),
    (["fasternet_t0", "--throughput-batch", "-4"], "batch size must be at least 1"),
    (["fasternet_t0", "--throughput-batch", "100000000"], "GiB of cpu memory; use a smaller batch size"),
    (["fasternet_t0", "--threads", "1", "999"], "thread count must be between 1 and"),
    (["fasternet_t0", "--img-size", "0"], "image size must be a positive integer"),
    (["fasternet_t0", "--iters", "15", "--per-round", "10"], "multiple of the calls per round"),
    (["fasternet_t0", "--model-kwargs", "{embed_dim: 8}"], "not valid JSON"),
    (["fasternet_t0", "--gpu-batch", "8", "--no-gpu"], "cannot be combined with --no-gpu"),
])
def test_cli_user_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args, "--forms", "train", "--out-dir", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@NO_CUDA
@pytest.mark.parametrize("gpu_option", [["--gpu"], ["--gpu-batch", "64"]])
def test_cli_gpu_options_without_gpu(tmp_path, capsys, gpu_option):
    with pytest.raises(SystemExit):
        main(["bench", "fasternet_t0", *gpu_option, "--forms", "train", "--out-dir", str(tmp_path)])
    assert "CUDA" in capsys.readouterr().err
