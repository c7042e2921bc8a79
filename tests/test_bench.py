"""The benchmark harness, runner, reports and command, on tiny models at 32 px."""
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from patnet.bench import (
    BenchConfig,
    TimingStats,
    compare,
    compare_runs,
    default_baselines,
    load_accuracies,
    matmul_gflops,
    measure_latency,
    run_benchmark,
    time_alternating,
)
from patnet.bench.plan import native_sections, skipped_regimes
from patnet.bench.runner import load_deploy, plan_sections
from patnet.bench.tables import efficiency_table, ratio_table, startup_table
from patnet.bench.timing import summarise
from patnet.cli import main
from patnet.runtimes import FLAGS_THAT_MATTER, check_native_bf16, describe_cpu

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
    (["fasternet_t0", "--no-cpu", "--no-gpu"], "nothing to measure: the CPU sections are off"),
    (["fasternet_t0", "--runtime", "onnxruntime", "--dtype", "bf16"], "nothing in this run measures bf16"),
    (["fasternet_t0", "--dtype", "fp16", "--no-gpu"], "fp16 runs on a CUDA GPU only"),
    (["fasternet_t0", "--img-size", "224", "0"], "image size must be a positive integer, got 0"),
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


# --- the regime matrix: runtimes, precisions, threads, image sizes ------------------------------------------------

TINY_JSON = json.dumps({"embed_dim": 16, "depths": [1, 1, 1, 1], "num_classes": 10})


def test_compare_runs_times_callables_of_any_runtime():
    runs = {"fast": lambda: time.sleep(0.002), "slow": lambda: time.sleep(0.006)}
    result = compare_runs(runs, baseline="fast", warmup=1, iters=4, per_round=2, precision="bfloat16",
                          memory_format="channels_last", settings=dict(img_size=64))
    assert 2.0 < result.ratios["slow"].median < 4.5 and result.stats["slow"].n == 4
    assert (result.precision, result.memory_format, result.settings["img_size"]) == ("bfloat16", "channels_last", 64)


def test_regime_dimensions_multiply_into_sections():
    config = BenchConfig(runtimes=("eager", "onnxruntime"), dtypes=("fp32",), img_size=(224, 64), latency_threads=(1,),
                         gpu=False)
    sections = plan_sections(config)
    assert [s.key for s in sections] == [
        "cpu_latency_1t_224px", "cpu_throughput_224px", "cpu_latency_1t_onnxruntime_fp32_224px",
        "cpu_throughput_onnxruntime_fp32_224px", "cpu_latency_1t_64px", "cpu_throughput_64px",
        "cpu_latency_1t_onnxruntime_fp32_64px", "cpu_throughput_onnxruntime_fp32_64px"]
    ort = sections[2]
    assert (ort.runtime, ort.dtype, ort.img_size, ort.threads, ort.batch_size) == ("onnxruntime", "fp32", 224, 1, 1)
    assert ort.title == "CPU latency, batch 1, 1 thread, onnxruntime fp32, 224x224"
    assert [s.key for s in plan_sections(replace(config, throughput=False, img_size=64))] == [
        "cpu_latency_1t", "cpu_latency_1t_onnxruntime_fp32"]


def test_regimes_no_runtime_can_run_are_named_or_refused():
    config = BenchConfig(runtimes=("eager", "onnxruntime"), dtypes=("fp32", "bf16"), latency_threads=(1,), gpu=False)
    assert not [s for s in plan_sections(config) if (s.runtime, s.dtype) == ("onnxruntime", "bf16")]
    (skipped,) = skipped_regimes(config)
    assert (skipped["runtime"], skipped["dtype"], skipped["device"]) == ("onnxruntime", "bf16", "cpu")
    assert "no bf16 kernels" in skipped["reason"]
    with pytest.raises(ValueError, match="nothing in this run measures bf16: ONNX Runtime's CPU provider"):
        plan_sections(replace(config, runtimes=("onnxruntime",)))
    with pytest.raises(ValueError, match="nothing in this run measures fp16: fp16 runs on a CUDA GPU only"):
        plan_sections(replace(config, dtypes=("fp16",)))
    with pytest.raises(ValueError, match="runtimes must be among eager, compile, onnxruntime, openvino"):
        plan_sections(replace(config, runtimes=("tvm",)))


def test_gpu_matrix_is_planned_when_cuda_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("patnet.bench.timing._device_memory", lambda device: 80 * 2**30)
    config = BenchConfig(runtimes=("eager", "compile", "openvino"), dtypes=("fp32", "bf16"), latency_threads=(1,))
    gpu = [s for s in plan_sections(config) if s.device == "cuda"]
    assert len(gpu) == 2 * 2 * 3  # eager and compile, batch 32 and 256, fp32 + AMP fp16 + AMP bf16
    by_key = {s.key: s for s in gpu}
    amp = by_key["gpu_amp_compile_b256"]
    assert (amp.runtime, amp.dtype, amp.amp_dtype, amp.channels_last, amp.batch_size) == (
        "compile", "fp16", "float16", True, 256)
    assert by_key["gpu_amp_bf16_b32"].amp_dtype == "bfloat16" and not by_key["gpu_fp32_b32"].channels_last
    skipped = {(s["device"], s["runtime"], s["dtype"]) for s in skipped_regimes(config)}
    assert {("cuda", "openvino", dtype) for dtype in ("fp32", "fp16", "bf16")} == skipped

    monkeypatch.setattr("patnet.bench.plan.native_bf16", lambda device: torch.device(device).type == "cuda")
    monkeypatch.setattr("patnet.bench.plan.check_native_bf16", lambda device: check_native_bf16("cpu"))
    monkeypatch.setattr("patnet.runtimes.hardware.cpu_flags", lambda: dict.fromkeys(FLAGS_THAT_MATTER, False))
    kept, dropped = native_sections(plan_sections(config))
    assert all(s.device == "cuda" for s in kept if s.dtype == "bf16")
    assert {(d["device"], d["runtime"]) for d in dropped} == {("cpu", "eager"), ("cpu", "compile"),
                                                              ("cpu", "openvino")}
    assert all("no native bf16" in d["reason"] for d in dropped)


def test_regime_run_times_every_runtime_with_own_input_channels(tmp_path, capsys):
    out = tmp_path / "out"
    kwargs = json.dumps({**json.loads(TINY_JSON), "in_chans": 1})
    argv = ["bench", "patnet_t0", "fasternet_t0", "--runtime", "eager", "onnxruntime", "openvino", "--dtype", "fp32",
            "--img-size", "32", "48", "--threads", "1", "--no-throughput", "--forms", "train", "--quick",
            "--model-kwargs", kwargs, "--matmul-size", "64", "--out-dir", str(out), "--no-progress"]
    assert main(argv) == 0
    saved = json.loads((out / "bench.json").read_text())
    command = saved["header"]["command"]
    assert command.startswith("patnet bench patnet_t0 fasternet_t0 --forms train --runtime eager onnxruntime "
                              "openvino --dtype fp32 --img-size 32 48") and command.endswith("--no-throughput")
    assert saved["models"]["patnet_t0"]["in_chans"] == 1 and set(saved["models"]["patnet_t0"]["macs_by_img_size"]) == {
        "32", "48"}
    regimes = [(s["runtime"], s["img_size"]) for s in saved["sections"]]
    assert regimes == [(r, img) for img in (32, 48) for r in ("eager", "onnxruntime", "openvino")]
    for section in saved["sections"]:
        form = "train" if section["runtime"] == "eager" else "deploy"  # other runtimes run the deploy form
        entry = section["results"]["patnet_t0"][form]
        assert entry["ratio"]["baseline"] == "fasternet_t0" and entry["ratio"]["median"] > 0
        assert entry["build_s"] + entry["first_call_s"] > 0 and entry["fraction_of_matmul"] > 0
    markdown = (out / "bench.md").read_text()
    assert describe_cpu() in markdown and "## Ratios by regime" in markdown and "![ratios by regime]" in markdown
    assert "| cpu | openvino | float32 | 1 | 1 | 1x48x48 |" in markdown
    assert (out / "bench_ratios.png").is_file() and "Ratios by regime" in capsys.readouterr().out


def test_a_runtime_computing_a_model_wrongly_is_reported_not_timed(monkeypatch, tmp_path):
    from patnet.runtimes import external

    build = external.build_openvino

    def wrong_for_patnet(model, *args):
        forward, prepare = build(model, *args)
        return (lambda x: forward(x) * (1.5 if hasattr(model, "min_input_size") else 1.0)), prepare

    monkeypatch.setattr(external, "build_openvino", wrong_for_patnet)
    models = {"patnet_t0": timm.create_model("patnet_t0", **TINY_KWARGS), "fasternet_t0": tiny_fasternet()}
    results = run_benchmark(quick_config(runtimes=("openvino",), throughput=False), tmp_path, models=models,
                            progress=False)
    (section,) = results["sections"]
    assert set(section["results"]) == {"fasternet_t0"}
    assert "differs from eager fp32" in section["not_timed"]["patnet_t0"]
    assert "| cpu | openvino | float32 | 1 | 1 | 3x32x32 | not timed |" in (tmp_path / "bench.md").read_text()

    only_patnet = run_benchmark(quick_config(runtimes=("openvino",), throughput=False),
                                models={"patnet_t0": models["patnet_t0"]}, progress=False)
    (section,) = only_patnet["sections"]
    assert section["results"] == {} and section["complete"] and set(section["not_timed"]) == {"patnet_t0"}


def test_bf16_sections_record_both_ceilings(monkeypatch):
    """The bf16 plumbing (ceiling, runners, report) exercised on any CPU by declaring bf16 native."""
    for target in ("patnet.bench.plan.native_bf16", "patnet.bench.runner.native_bf16"):
        monkeypatch.setattr(target, lambda device: True)
    monkeypatch.setattr("patnet.runtimes.runner.check_native_bf16", lambda device: None)
    results = run_benchmark(quick_config(dtypes=("fp32", "bf16"), throughput=False, iters=2),
                            models={"fasternet_t0": tiny_fasternet()}, progress=False)
    assert results["header"]["matmul_gflops_bf16"]["1"] > 0
    fp32, bf16 = results["sections"]
    assert (fp32["dtype"], bf16["dtype"], bf16["precision"]) == ("fp32", "bf16", "bfloat16")
    entry = bf16["results"]["fasternet_t0"]["train"]
    assert entry["fraction_of_bf16_matmul"] > 0 and entry["fraction_of_matmul"] > 0


def test_regime_tables_from_known_results():
    section = dict(device="cpu", runtime="openvino", precision="bfloat16", threads=1, batch_size=1, img_size=224,
                   not_timed={}, results={
                       "patnet_t2": {"deploy": dict(median_ms=7.8, gflops=266.0, fraction_of_matmul=1.4,
                                                    fraction_of_bf16_matmul=0.23, build_s=3.0, first_call_s=0.5,
                                                    ratio=dict(median=1.27, baseline="fasternet_t2"))},
                       "fasternet_t2": {"deploy": dict(median_ms=6.1, gflops=626.0, fraction_of_matmul=3.3,
                                                       fraction_of_bf16_matmul=0.53, build_s=2.0, first_call_s=0.25,
                                                       ratio=None)}})
    results = dict(models={"patnet_t2": dict(baseline="fasternet_t2", in_chans=3),
                           "fasternet_t2": dict(baseline=None, in_chans=3)}, sections=[section])
    headers, (row,) = ratio_table(results)
    assert headers[-1] == "patnet_t2 / fasternet_t2" and row == [
        "cpu", "openvino", "bfloat16", "1", "1", "3x224x224", "1.27 (7.80 / 6.10)"]
    assert efficiency_table(results)[1][0][-2:] == ["266 (140% / 23%)", "626 (330% / 53%)"]
    assert startup_table(results)[1][0][-2:] == ["3.5", "2.2"]


def test_regimes_median_takes_each_cells_median_over_runs(tmp_path):
    """scripts/regimes_median.py: per-cell medians of the ratio, with the runs' range, over several runs."""
    def section(runtime: str, threads: int, ratio: float) -> dict:
        return {"kind": "latency", "device": "cpu", "runtime": runtime, "precision": "float32", "threads": threads,
                "results": {"patnet_t0": {"deploy": {"ratio": {"median": ratio}}}}}

    for run, ratios in enumerate(((0.70, 0.90), (0.80, 1.10), (0.60, 1.00))):
        folder = tmp_path / f"run{run}" / "regimes" / "rgb224"
        folder.mkdir(parents=True)
        sections = [section("eager", 1, ratios[0]), section("openvino", 2, ratios[1])]
        (folder / "bench.json").write_text(json.dumps({"sections": sections}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "regimes_median.py"
    out = subprocess.run([sys.executable, str(script), *(str(tmp_path / f"run{i}") for i in range(3))],
                         capture_output=True, text=True, check=True).stdout
    assert "| eager | float32 | 1 | 0.70 (0.60-0.80, 3) |" in out
    assert "| openvino | float32 | 2 | 1.00 (0.90-1.10, 3) |" in out
