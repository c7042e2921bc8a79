"""One-process A/B of an ONNX Runtime session config entry, on PATNet and FasterNet alike.

Four ``make_runner`` runners (patnet_t0 and fasternet_t0, each with the shipped ``onnxruntime_options`` and with
``KEY=VALUE`` added), batch 1, fp32, alternated (20 warm-up + 400 timed calls in rotating 5-call rounds); prints the
median ms of each, PATNet / FasterNet with and without the entry, and each model's time with it over without.

    .venv/bin/python docs/bench/ort_option_ab.py KEY VALUE {64|224} THREADS
"""
import sys
from unittest import mock

import timm
import torch

import patnet  # noqa: F401
from patnet.bench.timing import summarise, time_alternating
from patnet.runtimes import external, make_runner

SHIPPED = external.onnxruntime_options


def main() -> None:
    key, value, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    chans, classes = (1, 10) if size == 64 else (3, 1000)

    def with_entry(count):
        options = SHIPPED(count)
        options.add_session_config_entry(key, value)
        return options

    x = torch.randn(1, chans, size, size)
    runners = {}
    for name in ("patnet_t0", "fasternet_t0"):
        model = timm.create_model(name, num_classes=classes, in_chans=chans).eval()
        runners[name] = make_runner(model, "onnxruntime", "fp32", x, threads)
        with mock.patch.object(external, "onnxruntime_options", with_entry):
            runners[name + "+entry"] = make_runner(model, "onnxruntime", "fp32", x, threads)
    ready = runners["patnet_t0"].prepare(x)
    calls = {key_: (lambda runner=runner: runner(ready)) for key_, runner in runners.items()}
    with torch.inference_mode():
        times = time_alternating(calls, iters=400, warmup=20, per_round=5)
    stats, family = summarise(times, {"patnet_t0": "fasternet_t0", "patnet_t0+entry": "fasternet_t0+entry"})
    _, own = summarise(times, {"patnet_t0+entry": "patnet_t0", "fasternet_t0+entry": "fasternet_t0"})
    ms = " | ".join(f"{stats[k].median_ms:.3f}" for k in ("patnet_t0", "patnet_t0+entry", "fasternet_t0",
                                                          "fasternet_t0+entry"))
    print(f"| {key}={value} | {size} | {threads} | {ms} | {family['patnet_t0'].median:.3f} | "
          f"{family['patnet_t0+entry'].median:.3f} | {own['patnet_t0+entry'].median:.3f} | "
          f"{own['fasternet_t0+entry'].median:.3f} |")


if __name__ == "__main__":
    main()
