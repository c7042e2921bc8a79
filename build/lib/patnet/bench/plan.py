"""What a benchmark run measures: its configuration and the sections (regimes) it plans.

A section is one timed comparison of all models in one regime: device, runtime, precision, threads,
batch and input size. The dimensions multiply: every image size x runtime x precision gets CPU latency
sections (one per thread count) and a CPU throughput section, and on a GPU throughput sections per batch
size in fp32 and in AMP. A combination a runtime cannot run at all (ONNX Runtime in bf16, the ONNX
runtimes on a GPU) is left out and named in the report; a requested value that nothing measures is
an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from itertools import product

import torch

from ..device import resolve_device
from ..errors import InvalidValueError
from ..models import baseline_partner, patnet_variants, size_key
from ..runtimes import GPU_DTYPES, RUNTIMES, check_native_bf16, check_threads, native_bf16, unsupported_reason
from .timing import AMP_DTYPES, check_batch_fits

LARGEST_DEFAULT = "patnet_s"  # M and L take seconds per call on a 2-core CPU
FORMS = ("train", "deploy")
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
LONG_DTYPE = {short: long for long, short in SHORT_DTYPE.items()}


def default_models() -> tuple[str, ...]:
    """PATNet's variants up to ``LARGEST_DEFAULT``, then their FasterNet partners."""
    patnets = [name for name in patnet_variants() if size_key(name) <= size_key(LARGEST_DEFAULT)]
    return (*patnets, *(partner for partner in map(baseline_partner, patnets) if partner))


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how; the defaults follow the papers' protocol (``measurement.md``).

    ``runtimes``, ``dtypes``, ``img_size`` (one size or several), ``latency_threads`` and ``gpu_batch``
    (one or several) are the regime dimensions; ``forms`` applies to the eager runtime (the others run
    the deploy form).
    """

    models: tuple[str, ...] = field(default_factory=default_models)
    baseline: str | None = None
    forms: tuple[str, ...] = FORMS
    runtimes: tuple[str, ...] = ("eager",)
    dtypes: tuple[str, ...] = ("fp32",)
    img_size: int | tuple[int, ...] = 224
    model_kwargs: dict = field(default_factory=dict)
    cpu: bool = True  # False: GPU sections only
    latency_threads: tuple[int, ...] | None = None  # None: 1 and all cores
    latency_batch: int = 1
    warmup: int = 10
    iters: int = 200
    per_round: int = 10
    throughput: bool = True
    throughput_batch: int = 32
    throughput_threads: int | None = None  # None: all cores
    throughput_warmup: int = 2
    throughput_iters: int = 10
    gpu: bool | None = None  # None: when CUDA is available
    gpu_batch: int | tuple[int, ...] = (32, 256)
    gpu_warmup: int = 50
    gpu_iters: int = 200
    gpu_per_round: int = 10
    amp_dtype: str = "float16"
    matmul_size: int = 2048
    seed: int = 0

    @property
    def img_sizes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(_as_tuple(self.img_size)))

    @property
    def gpu_batches(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(_as_tuple(self.gpu_batch)))

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """Settings for a run of about a minute on a 2-core machine: a smoke test, not a measurement."""
        settings = dict(latency_threads=(1,), warmup=1, iters=8, per_round=2, throughput_batch=2,
                        throughput_threads=1, throughput_warmup=1, throughput_iters=2, gpu_batch=32, gpu_warmup=5,
                        gpu_iters=20, gpu_per_round=5, matmul_size=1024)
        return cls(**{**settings, **overrides})


def make_bench_config(quick: bool = False, **overrides) -> BenchConfig:
    """The defaults (or :meth:`BenchConfig.quick`'s settings) with the non-``None`` ``overrides`` applied."""
    base = BenchConfig.quick() if quick else BenchConfig()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Section:
    """One timed comparison of all models: a device, runtime, precision, thread count, batch and input size."""

    key: str
    title: str
    kind: str  # "latency" or "throughput"
    device: str
    threads: int | None
    batch_size: int
    warmup: int
    iters: int
    per_round: int
    amp_dtype: str | None = None
    channels_last: bool = False
    runtime: str = "eager"
    dtype: str = "fp32"
    img_size: int = 224


def _cores() -> int:
    return os.cpu_count() or 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def use_gpu(config: BenchConfig) -> bool:
    return torch.cuda.is_available() if config.gpu is None else config.gpu


def gpu_dtypes(config: BenchConfig) -> tuple[str, ...]:
    """The GPU's precisions: fp32, AMP in ``config.amp_dtype``, and any other requested precision."""
    return tuple(dict.fromkeys(("fp32", SHORT_DTYPE[config.amp_dtype], *config.dtypes)))


def _regime_suffix(config: BenchConfig, runtime: str, dtype: str | None, img: int) -> tuple[str, str]:
    """Key and title suffixes naming the regime when it is not the default one (eager fp32, one image size)."""
    key, title = "", ""
    if runtime != "eager" or (dtype or "fp32") != "fp32":
        key += f"_{runtime}" + (f"_{dtype}" if dtype else "")
        title += f", {runtime}" + (f" {dtype}" if dtype else "")
    if len(config.img_sizes) > 1:
        key, title = key + f"_{img}px", title + f", {img}x{img}"
    return key, title


def _cpu_sections(config: BenchConfig) -> list[Section]:
    if not config.cpu:
        return []
    threads = tuple(dict.fromkeys(config.latency_threads or (1, _cores())))
    sections = []
    for img, runtime, dtype in product(config.img_sizes, config.runtimes, config.dtypes):
        if unsupported_reason(runtime, dtype, "cpu"):
            continue
        regime = dict(runtime=runtime, dtype=dtype, img_size=img)
        key, title = _regime_suffix(config, runtime, dtype, img)
        batch = config.latency_batch
        sections += [Section(f"cpu_latency_{t}t{key}", f"CPU latency, batch {batch}, {_plural(t, 'thread')}{title}",
                             "latency", "cpu", check_threads(t), batch, config.warmup, config.iters,
                             config.per_round, **regime)
                     for t in threads]
        if config.throughput:
            t = check_threads(config.throughput_threads or _cores())
            sections.append(Section(f"cpu_throughput{key}", f"CPU throughput, batch {config.throughput_batch}, "
                                    f"{_plural(t, 'thread')}{title}", "throughput", "cpu", t, config.throughput_batch,
                                    config.throughput_warmup, config.throughput_iters, 1, **regime))
    return sections


def _gpu_sections(config: BenchConfig) -> list[Section]:
    """Throughput per batch size in fp32 NCHW and in AMP channels-last (the papers' GPU protocol)."""
    if not use_gpu(config):
        return []
    resolve_device("cuda")
    amp = SHORT_DTYPE[config.amp_dtype]
    sections = []
    for img, runtime, batch, dtype in product(config.img_sizes, config.runtimes, config.gpu_batches,
                                              gpu_dtypes(config)):
        if unsupported_reason(runtime, dtype, "cuda"):
            continue
        key = "gpu_fp32" if dtype == "fp32" else "gpu_amp" if dtype == amp else f"gpu_amp_{dtype}"
        title = f"GPU throughput, batch {batch}, " + ("fp32 NCHW" if dtype == "fp32" else
                                                      f"AMP {LONG_DTYPE[dtype]} channels-last")
        key_suffix, title_suffix = _regime_suffix(config, runtime, None, img)
        if len(config.gpu_batches) > 1:
            key_suffix += f"_b{batch}"
        sections.append(Section(key + key_suffix, title + title_suffix, "throughput", "cuda", None, batch,
                                config.gpu_warmup, config.gpu_iters, config.gpu_per_round,
                                amp_dtype=None if dtype == "fp32" else LONG_DTYPE[dtype],
                                channels_last=dtype != "fp32", runtime=runtime, dtype=dtype, img_size=img))
    return sections


def _check_dimensions(config: BenchConfig) -> None:
    for img in _as_tuple(config.img_size):
        if isinstance(img, bool) or not isinstance(img, int) or img < 1:
            raise InvalidValueError(f"image size must be a positive integer, got {img!r}")
    for what, values, choices in (("runtime", config.runtimes, RUNTIMES), ("dtype", config.dtypes, GPU_DTYPES)):
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            given = ", ".join(map(str, values)) or "none"
            raise InvalidValueError(f"{what}s must be among {', '.join(choices)}, got {given}")
    if config.amp_dtype not in AMP_DTYPES:
        raise InvalidValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {config.amp_dtype!r}")


def _check_section(section: Section) -> None:
    if section.batch_size < 1:
        raise InvalidValueError(f"{section.title}: batch size must be at least 1, got {section.batch_size}")
    if section.iters < 1 or section.warmup < 0 or section.per_round < 1:
        raise InvalidValueError(f"{section.title}: iterations must be >= 1, warm-up >= 0 and calls per round "
                                f">= 1 (got {section.iters}, {section.warmup}, {section.per_round})")
    if section.iters % section.per_round:
        raise InvalidValueError(f"{section.title}: iterations ({section.iters}) must be a multiple of the "
                                f"calls per round ({section.per_round})")
    check_batch_fits(section.batch_size, (3, section.img_size, section.img_size), torch.device(section.device))


def _check_all_measured(config: BenchConfig, sections: list[Section]) -> None:
    """Every requested runtime and precision must be measured somewhere; else say why not."""
    devices = ("cpu",) * config.cpu + ("cuda",) * use_gpu(config)
    combos = list(product(devices, config.runtimes, config.dtypes))
    for position, values in ((1, config.dtypes), (0, config.runtimes)):
        measured = {(s.runtime, s.dtype)[position] for s in sections}
        for value in values:
            if value not in measured:
                reasons = {unsupported_reason(runtime, dtype, device) for device, runtime, dtype in combos
                           if (runtime, dtype)[position] == value} - {None}
                raise InvalidValueError(f"nothing in this run measures {value}: " + "; ".join(sorted(reasons)))


def plan_sections(config: BenchConfig) -> list[Section]:
    """The sections ``config`` asks for, validated; GPU ones only where CUDA is (or must be) present."""
    _check_dimensions(config)
    if not config.cpu and not use_gpu(config):
        raise InvalidValueError("nothing to measure: the CPU sections are off (--no-cpu) and there is no GPU section "
                                "(no CUDA GPU, or --no-gpu)")
    sections = _cpu_sections(config) + _gpu_sections(config)
    for section in sections:
        _check_section(section)
    _check_all_measured(config, sections)
    return sections


def skipped_regimes(config: BenchConfig) -> list[dict]:
    """The requested combinations no runtime can run, each with the reason (for the report)."""
    combos = [("cpu", runtime, dtype) for runtime, dtype in product(config.runtimes, config.dtypes) if config.cpu]
    if use_gpu(config):
        combos += [("cuda", runtime, dtype) for runtime, dtype in product(config.runtimes, gpu_dtypes(config))]
    return [dict(device=device, runtime=runtime, dtype=dtype, reason=reason) for device, runtime, dtype in combos
            if (reason := unsupported_reason(runtime, dtype, device))]


def native_sections(sections: list[Section]) -> tuple[list[Section], list[dict]]:
    """``sections`` less the bf16 ones on hardware without native bf16, and those skipped regimes with the
    reason; a one-line error when that leaves no bf16 section although one was planned."""
    kept, skipped, reasons = [], [], {}
    for section in sections:
        if section.dtype != "bf16" or native_bf16(section.device):
            kept.append(section)
            continue
        if section.device not in reasons:
            try:
                check_native_bf16(section.device)
            except InvalidValueError as exc:
                reasons[section.device] = str(exc)
        reason = reasons.get(section.device, "no native bf16")
        entry = dict(device=section.device, runtime=section.runtime, dtype="bf16", reason=reason)
        if entry not in skipped:
            skipped.append(entry)
    if skipped and not any(s.dtype == "bf16" for s in kept):
        check_native_bf16(skipped[0]["device"])
    return kept, skipped

