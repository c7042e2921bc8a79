"""One-process A/B of a runtime setting, on PATNet and FasterNet alike: an ONNX Runtime session config entry, an
OpenVINO ``compile_model`` property or a ``torch._inductor.config`` entry for ``torch.compile`` (an int, float or
bool VALUE; dotted KEYs such as ``cpp.min_chunk_size`` reach nested options).

Four ``make_runner`` runners (VARIANT and its FasterNet partner, each with the shipped settings,
``onnxruntime_options``, ``openvino_config`` or ``_compile_settings``, and with ``KEY=VALUE`` added), batch 1,
alternated (20 warm-up + 400 timed calls in rotating 5-call rounds); prints the median ms of each, PATNet /
FasterNet with and without the setting, and each model's time with it over without.

    .venv/bin/python docs/bench/option_ab.py {onnxruntime|openvino|compile} KEY VALUE {64|224} THREADS [DTYPE] [VARIANT]

DTYPE is fp32 (the default) or, for openvino and compile, bf16; VARIANT is patnet_t0 (the default) or another PATNet
variant.
"""
import ast
import contextlib
import sys
from unittest import mock

import timm
import torch

import patnet  # noqa: F401
from patnet.bench.timing import summarise, time_alternating
from patnet.models import baseline_partner
from patnet.runtimes import external, make_runner
from patnet.runtimes import runner as runtime_runner

SHIPPED = {"onnxruntime": (external, "onnxruntime_options"), "openvino": (external, "openvino_config"),
           "compile": (runtime_runner, "_compile_settings")}


def with_setting(runtime: str, key: str, value: str):
    """The runtime's shipped settings function with ``key=value`` added."""
    owner, name = SHIPPED[runtime]
    shipped = getattr(owner, name)
    if runtime == "compile":
        @contextlib.contextmanager
        def settings(dtype, device):
            import torch._inductor.config as inductor_config
            with shipped(dtype, device), inductor_config.patch({key: ast.literal_eval(value)}):
                yield
        return settings
    if runtime == "onnxruntime":
        def options(threads):
            made = shipped(threads)
            made.add_session_config_entry(key, value)
            return made
        return options

    def config(dtype, threads):
        return {**shipped(dtype, threads), key: value}
    return config


def main() -> None:
    runtime, key, value, size, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    dtype = sys.argv[6] if len(sys.argv) > 6 else "fp32"
    name = sys.argv[7] if len(sys.argv) > 7 else "patnet_t0"
    if runtime not in SHIPPED:
        sys.exit(f"unknown runtime {runtime!r}; choose one of {sorted(SHIPPED)}")
    torch.set_num_threads(threads)
    chans, classes = (1, 10) if size == 64 else (3, 1000)
    partner = baseline_partner(name)
    x = torch.randn(1, chans, size, size)
    runners = {}
    for model_name in (name, partner):
        model = timm.create_model(model_name, num_classes=classes, in_chans=chans).eval()
        runners[model_name] = make_runner(model, runtime, dtype, x, threads)
        with mock.patch.object(*SHIPPED[runtime], with_setting(runtime, key, value)):
            runners[model_name + "+setting"] = make_runner(model, runtime, dtype, x, threads)
    ready = runners[name].prepare(x)
    calls = {key_: (lambda runner=runner: runner(ready)) for key_, runner in runners.items()}
    with torch.inference_mode():
        times = time_alternating(calls, iters=400, warmup=20, per_round=5)
    stats, family = summarise(times, {name: partner, name + "+setting": partner + "+setting"})
    _, own = summarise(times, {name + "+setting": name, partner + "+setting": partner})
    ms = " | ".join(f"{stats[k].median_ms:.3f}" for k in (name, name + "+setting", partner, partner + "+setting"))
    print(f"| {runtime} {key}={value} | {name} | {size} | {dtype} | {threads} | {ms} | {family[name].median:.3f} | "
          f"{family[name + '+setting'].median:.3f} | {own[name + '+setting'].median:.3f} | "
          f"{own[partner + '+setting'].median:.3f} |")


if __name__ == "__main__":
    main()
