"""Timing harness: models timed in alternation, robust statistics, per-round ratios.

Absolute times on a shared machine drift; a claim is a ratio measured in one process with the models
timed in alternation (``measurement.md``). :func:`time_alternating` runs every model a few calls per
round, rotating the order each round, so slow drift hits all models alike; :func:`compare_runs` wraps
it for any callables (runners of any runtime) and reports per-model statistics and the median of
per-round time ratios against a baseline; :func:`compare` does the same for ``nn.Module`` s.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..device import resolve_device
from ..errors import InvalidValueError
from ..layers.onednn import HAS_KERNEL, PackedMatrix
from ..runtimes import check_threads, num_threads

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TimingStats:
    """Distribution of one model's per-call time, in milliseconds."""

    n: int
    median_ms: float
    mean_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    p90_ms: float

    @classmethod
    def from_seconds(cls, seconds: np.ndarray) -> TimingStats:
        ms = np.asarray(seconds, dtype=np.float64).ravel() * 1e3
        if ms.size == 0:
            raise InvalidValueError("no timings to summarise")
        p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
        return cls(int(ms.size), float(p50), float(ms.mean()), float(p10), float(p25), float(p75), float(p90))

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    def images_per_s(self, batch_size: int) -> float:
        """Throughput implied by the median call time."""
        return batch_size / (self.median_ms / 1e3)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RatioStats:
    """Per-round time ratios of a model over its baseline; below 1 the model is faster."""

    baseline: str
    rounds: int
    median: float
    p10: float
    p90: float

    @classmethod
    def from_round_times(cls, baseline: str, model_s: np.ndarray, baseline_s: np.ndarray) -> RatioStats:
        ratios = np.asarray(model_s, dtype=np.float64) / np.asarray(baseline_s, dtype=np.float64)
        p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
        return cls(baseline, int(ratios.size), float(p50), float(p10), float(p90))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """Result of :func:`compare`: per-model statistics and ratios, and how they were measured."""

    stats: dict[str, TimingStats]
    ratios: dict[str, RatioStats]
    batch_size: int
    threads: int
    device: str
    precision: str
    memory_format: str
    rounds: int
    rounds_planned: int
    settings: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.rounds == self.rounds_planned

    def images_per_s(self, name: str) -> float:
        return self.stats[name].images_per_s(self.batch_size)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def time_alternating(
    runs: Mapping[str, Callable[[], object]],
    *,
    iters: int,
    warmup: int,
    per_round: int = 1,
    time_each_call: bool = True,
    synchronize: Callable[[], None] | None = None,
    on_round: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Time each callable ``iters`` times after ``warmup`` calls, in alternation.

    Each round runs every callable ``per_round`` consecutive times, starting the order one place
    further each round. With ``time_each_call`` every call is timed on its own (the papers' CPU
    protocol); otherwise the ``per_round`` calls are timed together between two ``synchronize()``
    calls (the GPU protocol) and give one sample. Returns per-call seconds shaped
    ``(rounds, samples_per_round)``; ``on_round(rounds_done, times_so_far)`` is called after each round.
    """
    _positive("iters", iters)
    _positive("per_round", per_round)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InvalidValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if iters % per_round:
        raise InvalidValueError(f"iters ({iters}) must be a multiple of the calls per round ({per_round})")
    if not runs:
        raise InvalidValueError("nothing to time: no models given")
    sync = synchronize or (lambda: None)
    names = list(runs)
    rounds = iters // per_round
    samples = per_round if time_each_call else 1
    times = {name: np.zeros((rounds, samples)) for name in names}

    for name in names:
        for _ in range(warmup):
            runs[name]()
    sync()
    for r in range(rounds):
        start = r % len(names)
        for name in names[start:] + names[:start]:
            fn = runs[name]
            if time_each_call:
                for i in range(per_round):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[name][r, i] = time.perf_counter() - t0
            else:
                sync()
                t0 = time.perf_counter()
                for _ in range(per_round):
                    fn()
                sync()
                times[name][r, 0] = (time.perf_counter() - t0) / per_round
        if on_round is not None:
            on_round(r + 1, {name: t[: r + 1] for name, t in times.items()})
    return times


def _resolve_baselines(names: list[str], baseline: str | Mapping[str, str] | None) -> dict[str, str]:
    if baseline is None:
        return {}
    pairs = {name: baseline for name in names} if isinstance(baseline, str) else dict(baseline)
    for name, base in pairs.items():
        if name not in names or base not in names:
            missing = name if name not in names else base
            raise InvalidValueError(f"baseline pairing {name!r} -> {base!r} names {missing!r}, which is not among "
                                    f"the models being compared ({', '.join(names)})")
    return {name: base for name, base in pairs.items() if name != base}


def summarise(
    times: Mapping[str, np.ndarray], baselines: Mapping[str, str]
) -> tuple[dict[str, TimingStats], dict[str, RatioStats]]:
    """Per-model statistics, and ratios of per-round median times against each model's baseline."""
    stats = {name: TimingStats.from_seconds(t) for name, t in times.items()}
    per_round = {name: np.median(t, axis=1) for name, t in times.items()}
    ratios = {name: RatioStats.from_round_times(base, per_round[name], per_round[base])
              for name, base in baselines.items()}
    return stats, ratios


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` in eval mode on ``device`` and memory format; a copy when either must change."""
    param = next(model.parameters(), None)
    on_device = param is None or param.device == device
    if not on_device or channels_last:
        model = copy.deepcopy(model).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    return model.eval()


def _forward(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> Callable[[], object]:
    def forward() -> object:
        with torch.inference_mode():
            if amp_dtype is None:
                return model(x)
            with torch.autocast(x.device.type, dtype=amp_dtype):
                return model(x)
    return forward


def _out_of_memory(exc: RuntimeError) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch_fits(batch_size: int, input_size: tuple[int, int, int], device: torch.device) -> None:
    """Fail clearly when the fp32 input batch alone is larger than the device's memory."""
    needed = 4 * batch_size * int(np.prod(input_size))
    available = _device_memory(device)
    if needed > available:
        raise InvalidValueError(f"a batch of {batch_size} inputs of {'x'.join(map(str, input_size))} needs "
                                f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of {device.type} "
                                "memory; use a smaller batch size")


@contextlib.contextmanager
def _out_of_memory_as_user_error(batch_size: int, device: torch.device) -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        if _out_of_memory(exc):
            raise InvalidValueError(f"batch size {batch_size} does not fit in {device.type} memory for these models; "
                                    f"use a smaller batch size") from exc
        raise


def compare_runs(
    runs: Mapping[str, Callable[[], object]],
    *,
    baseline: str | Mapping[str, str] | None = None,
    batch_size: int = 1,
    threads: int | None = 1,
    warmup: int = 10,
    iters: int = 200,
    per_round: int = 1,
    device: str | torch.device = "cpu",
    time_each_call: bool | None = None,
    precision: str = "float32",
    memory_format: str = "NCHW",
    settings: Mapping[str, object] | None = None,
    on_round: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Time the zero-argument callables ``runs`` (each one call of a model on its input) in alternation.

    ``baseline``, ``threads``, ``warmup``, ``iters``, ``per_round`` and ``on_round`` as :func:`compare`;
    ``batch_size``, ``precision``, ``memory_format`` and ``settings`` describe what the calls do, for the
    result. On CUDA each round's ``per_round`` calls are timed as one block between synchronisations
    unless ``time_each_call`` says otherwise.
    """
    device = resolve_device(device)
    baselines = _resolve_baselines(list(runs), baseline)
    _positive("batch_size", batch_size)
    _positive("iters", iters)
    _positive("per_round", per_round)
    if threads is not None:
        check_threads(threads)
    if time_each_call is None:
        time_each_call = device.type == "cpu"
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rounds_planned = iters // per_round

    def result(times: Mapping[str, np.ndarray], rounds: int) -> Comparison:
        stats, ratios = summarise(times, baselines)
        return Comparison(
            stats=stats, ratios=ratios, batch_size=batch_size, threads=torch.get_num_threads(), device=str(device),
            precision=precision, memory_format=memory_format, rounds=rounds, rounds_planned=rounds_planned,
            settings=dict(warmup=warmup, iters=iters, per_round=per_round, time_each_call=time_each_call,
                          **(settings or {})),
        )

    report_round = None if on_round is None else (lambda done, times: on_round(result(times, done)))
    with _out_of_memory_as_user_error(batch_size, device), num_threads(threads):
        times = time_alternating(runs, iters=iters, warmup=warmup, per_round=per_round,
                                 time_each_call=time_each_call, synchronize=sync, on_round=report_round)
        return result(times, rounds_planned)


def compare(
    models: Mapping[str, nn.Module],
    *,
    baseline: str | Mapping[str, str] | None = None,
    batch_size: int = 1,
    input_size: tuple[int, int, int] = (3, 224, 224),
    threads: int | None = 1,
    warmup: int = 10,
    iters: int = 200,
    per_round: int = 1,
    device: str | torch.device = "cpu",
    amp_dtype: str | None = None,
    channels_last: bool = False,
    time_each_call: bool | None = None,
    on_round: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Time ``models`` in alternation on one shared random input and compare them.

    ``baseline`` is one model name (every other model is compared with it) or a mapping from model
    name to its baseline's name. ``threads`` sets ``torch.set_num_threads`` for the run (``None``:
    all current threads). On CUDA, ``cudnn.benchmark`` is on and, unless ``time_each_call`` says
    otherwise, each round's ``per_round`` calls are timed as one block between synchronisations.
    ``amp_dtype`` ('float16' or 'bfloat16') runs under autocast. Models are put in eval mode and
    copied when they must move device or memory format. ``on_round`` receives the partial result
    after every round, so callers can save what was measured before an interruption.
    """
    device = resolve_device(device)
    _resolve_baselines(list(models), baseline)
    _positive("batch_size", batch_size)
    if threads is not None:
        check_threads(threads)
    if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
        raise InvalidValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {amp_dtype!r}")
    if len(input_size) != 3:
        raise InvalidValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")
    check_batch_fits(batch_size, input_size, device)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or cudnn_benchmark
    try:
        with _out_of_memory_as_user_error(batch_size, device):
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            x = torch.randn(batch_size, *input_size, device=device).contiguous(memory_format=memory_format)
            amp = AMP_DTYPES[amp_dtype] if amp_dtype else None
            runs = {name: _forward(_prepare(model, device, channels_last), x, amp) for name, model in models.items()}
        return compare_runs(runs, baseline=baseline, batch_size=batch_size, threads=threads, warmup=warmup,
                            iters=iters, per_round=per_round, device=device, time_each_call=time_each_call,
                            precision=f"amp {amp_dtype}" if amp_dtype else "float32",
                            memory_format="channels_last" if channels_last else "NCHW",
                            settings=dict(input_size=list(input_size)), on_round=on_round)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def measure_latency(model: nn.Module, **kwargs) -> TimingStats:
    """Per-call time statistics of one model; keyword arguments as :func:`compare`."""
    return compare({"model": model}, **kwargs).stats["model"]


def matmul_gflops(threads: int | None = 1, size: int = 2048, iters: int = 5, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a ``size`` x ``size`` matrix product in ``dtype``: the machine's practical ceiling.

    Median over ``iters`` timed products after one warm-up, with ``threads`` intra-op threads. On a CPU, the
    faster of ``torch.mm`` (MKL in fp32) and oneDNN's linear with a prepacked weight, timed in alternation:
    MKL's fp32 GEMM is slow on AMD CPUs (:func:`~patnet.runtimes.hardware.mkl_gemm_is_slow`), where
    ``torch.mm`` alone gave a ceiling that OpenVINO's whole models exceeded twice over.
    """
    device = resolve_device(device)
    _positive("size", size)
    _positive("iters", iters)
    if threads is not None:
        check_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    products = {"mm": lambda: torch.mm(a, b)}
    if device.type == "cpu" and HAS_KERNEL:
        packed, bias = PackedMatrix(), torch.zeros(size, dtype=dtype)
        products["onednn"] = lambda: packed.product(a, b, bias)
    with num_threads(threads):
        times = time_alternating(products, iters=iters, warmup=1, synchronize=sync)
    return 2 * size**3 / min(float(np.median(t)) for t in times.values()) / 1e9
