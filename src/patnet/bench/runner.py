"""The benchmark run: build models, count their size, time every section, save results as they come.

A run has sections (CPU latency per thread count, CPU throughput, GPU throughput in fp32 and in AMP
channels-last). Within a section every model, in each requested form, is timed in alternation with
all the others; ratios are against each model's baseline in the same form.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..device import resolve_device
from ..errors import InvalidValueError
from ..flops import achieved_gflops, count_macs, count_params
from ..models import baseline_partner, check_model_name, create_model, patnet_variants, size_key
from .report import load_accuracies, load_average, machine_info, write_outputs
from .timing import Comparison, check_batch_fits, check_threads, compare, matmul_gflops

LARGEST_DEFAULT = "patnet_s"  # M and L take seconds per call on a 2-core CPU
FORMS = ("train", "deploy")


def default_models() -> tuple[str, ...]:
    """PATNet's variants up to ``LARGEST_DEFAULT``, then their FasterNet partners."""
    patnets = [name for name in patnet_variants() if size_key(name) <= size_key(LARGEST_DEFAULT)]
    return (*patnets, *(partner for partner in map(baseline_partner, patnets) if partner))


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how; the defaults follow the papers' protocol (``measurement.md``)."""

    models: tuple[str, ...] = field(default_factory=default_models)
    baseline: str | None = None
    forms: tuple[str, ...] = FORMS
    img_size: int = 224
    model_kwargs: dict = field(default_factory=dict)
    latency_threads: tuple[int, ...] | None = None  # None: 1 and all cores
    latency_batch: int = 1
    warmup: int = 10
    iters: int = 200
    per_round: int = 10
    throughput_batch: int = 32
    throughput_threads: int | None = None  # None: all cores
    throughput_warmup: int = 2
    throughput_iters: int = 10
    gpu: bool | None = None  # None: when CUDA is available
    gpu_batch: int = 256
    gpu_warmup: int = 50
    gpu_iters: int = 200
    gpu_per_round: int = 10
    amp_dtype: str = "float16"
    matmul_size: int = 2048
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """Settings for a run of about a minute on a 2-core machine: a smoke test, not a measurement."""
        settings = dict(latency_threads=(1,), warmup=1, iters=8, per_round=2, throughput_batch=2,
                        throughput_threads=1, throughput_warmup=1, throughput_iters=2, gpu_batch=32, gpu_warmup=5,
                        gpu_iters=20, gpu_per_round=5, matmul_size=1024)
        return cls(**{**settings, **overrides})


@dataclass(frozen=True)
class Section:
    """One timed comparison of all models: a device, thread count, batch, precision and layout."""

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


def _cores() -> int:
    return os.cpu_count() or 1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_sections(config: BenchConfig) -> list[Section]:
    """The sections ``config`` asks for, validated; GPU ones only where CUDA is (or must be) present."""
    if isinstance(config.img_size, bool) or not isinstance(config.img_size, int) or config.img_size < 1:
        raise InvalidValueError(f"image size must be a positive integer, got {config.img_size!r}")
    threads = tuple(dict.fromkeys(config.latency_threads or (1, _cores())))
    sections = [
        Section(f"cpu_latency_{t}t", f"CPU latency, batch {config.latency_batch}, {_plural(t, 'thread')}",
                "latency", "cpu", check_threads(t), config.latency_batch, config.warmup, config.iters,
                config.per_round)
        for t in threads
    ]
    tp_threads = check_threads(config.throughput_threads or _cores())
    sections.append(Section("cpu_throughput",
                            f"CPU throughput, batch {config.throughput_batch}, {_plural(tp_threads, 'thread')}",
                            "throughput", "cpu", tp_threads, config.throughput_batch,
                            config.throughput_warmup, config.throughput_iters, 1))
    use_gpu = torch.cuda.is_available() if config.gpu is None else config.gpu
    if use_gpu:
        resolve_device("cuda")
        common = dict(kind="throughput", device="cuda", threads=None, batch_size=config.gpu_batch,
                      warmup=config.gpu_warmup, iters=config.gpu_iters, per_round=config.gpu_per_round)
        sections.append(Section("gpu_fp32", f"GPU throughput, batch {config.gpu_batch}, fp32 NCHW", **common))
        sections.append(Section("gpu_amp", f"GPU throughput, batch {config.gpu_batch}, "
                                f"AMP {config.amp_dtype} channels-last", amp_dtype=config.amp_dtype,
                                channels_last=True, **common))
    for section in sections:
        if section.batch_size < 1:
            raise InvalidValueError(f"{section.title}: batch size must be at least 1, got {section.batch_size}")
        if section.iters < 1 or section.warmup < 0 or section.per_round < 1:
            raise InvalidValueError(f"{section.title}: iterations must be >= 1, warm-up >= 0 and calls per round "
                                    f">= 1 (got {section.iters}, {section.warmup}, {section.per_round})")
        if section.iters % section.per_round:
            raise InvalidValueError(f"{section.title}: iterations ({section.iters}) must be a multiple of the "
                                    f"calls per round ({section.per_round})")
        check_batch_fits(section.batch_size, (3, config.img_size, config.img_size), torch.device(section.device))
    return sections


def default_baselines(names: Sequence[str], fallback: str | None = None) -> dict[str, str]:
    """Each ``patnet_X`` against ``fasternet_X`` when that is in ``names``, any other model against
    ``fallback`` (when given)."""
    baselines = {}
    for name in names:
        partner = baseline_partner(name)
        base = partner if partner in names else fallback
        if base is not None and base != name:
            baselines[name] = base
    return baselines


def load_deploy() -> Callable[[nn.Module], nn.Module]:
    """``patnet.deploy.deploy``, or a clear error while it does not exist."""
    try:
        from patnet.deploy import deploy
    except ImportError as exc:
        if exc.name not in ("patnet.deploy", None):
            raise
        raise InvalidValueError("the deploy form needs patnet.deploy.deploy, which this install lacks; "
                                "measure the training form only (--forms train)") from exc
    return deploy


def _variant(name: str, form: str) -> str:
    return f"{name}:{form}"


def _section_record(section: Section, comparison: Comparison, macs: Mapping[str, int],
                    ceilings: Mapping[str, float]) -> dict:
    """A section's JSON record: settings, and per model and form the statistics, ratio and GFLOP/s."""
    ceiling = ceilings.get(str(section.threads)) if section.device == "cpu" else None
    results: dict[str, dict] = {}
    for variant, stats in comparison.stats.items():
        name, form = variant.rsplit(":", 1)
        gflops = achieved_gflops(macs[name], stats.median_ms / 1e3, section.batch_size)
        ratio = comparison.ratios.get(variant)
        results.setdefault(name, {})[form] = {
            **stats.to_dict(),
            "iqr_ms": stats.iqr_ms,
            "images_per_s": stats.images_per_s(section.batch_size),
            "gflops": gflops,
            "fraction_of_matmul": gflops / ceiling if ceiling else None,
            "ratio": None if ratio is None else {**ratio.to_dict(), "baseline": ratio.baseline.rsplit(":", 1)[0]},
        }
    return {
        **asdict(section),
        "precision": comparison.precision,
        "memory_format": comparison.memory_format,
        "rounds": comparison.rounds,
        "rounds_planned": comparison.rounds_planned,
        "complete": comparison.complete,
        "results": results,
    }


def _model_names(config: BenchConfig, models: Mapping[str, nn.Module] | None) -> list[str]:
    """The models to measure (the baseline included), after checking names and forms."""
    names = list(dict.fromkeys(models if models is not None else config.models))
    if config.baseline is not None and config.baseline not in names:
        if models is not None:
            raise InvalidValueError(f"baseline {config.baseline!r} is not among the given models ({', '.join(models)})")
        names.append(config.baseline)
    if not names:
        raise InvalidValueError("no models to benchmark")
    if models is None:
        for name in names:
            check_model_name(name)
    unknown = [form for form in config.forms if form not in FORMS]
    if unknown or not config.forms:
        raise InvalidValueError(f"forms must be among {', '.join(FORMS)}, got {', '.join(config.forms) or 'none'}")
    return names


def _check_accuracies(accuracy_file, names: list[str], plot_y: str | None) -> tuple[dict[str, float], str]:
    """The accuracies to plot (from ``accuracy_file``) and the plot's y axis, checked."""
    accuracies = load_accuracies(accuracy_file) if accuracy_file else {}
    if accuracies and not set(accuracies) & set(names):
        raise InvalidValueError(f"{accuracy_file} gives no accuracy for any of the models ({', '.join(names)})")
    plot_y = plot_y or ("accuracy" if accuracies else "macs")
    if plot_y not in ("macs", "accuracy"):
        raise InvalidValueError(f"plot_y must be 'macs' or 'accuracy', got {plot_y!r}")
    if plot_y == "accuracy" and not accuracies:
        raise InvalidValueError("an accuracy plot needs a results file with accuracies (--accuracy FILE)")
    return accuracies, plot_y


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _BenchRun:
    """One benchmark run: its results dict, saved to ``out_dir`` as it grows."""

    def __init__(self, config: BenchConfig, out_dir: str | Path | None, plot_y: str, command: str | None,
                 save_every_s: float):
        self.config, self.plot_y, self.save_every_s = config, plot_y, save_every_s
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.input_size = (3, config.img_size, config.img_size)
        self.results = {
            "header": {**machine_info(), "command": command, "config": asdict(config), "started": _now(),
                       "finished": None, "interrupted": False, "input_size": list(self.input_size),
                       "matmul_gflops": {}},
            "models": {},
            "sections": [],
        }
        self.last_save = 0.0

    def save(self, plot: bool = False, force: bool = True) -> None:
        if self.out_dir is None or (not force and time.monotonic() - self.last_save < self.save_every_s):
            return
        write_outputs(self.results, self.out_dir, plot_y=self.plot_y if plot else None)
        self.last_save = time.monotonic()

    def build(self, names: list[str], models, baselines: dict[str, str], accuracies: dict[str, float], deploy,
              progress: bool) -> tuple[dict[str, nn.Module], dict[str, int]]:
        """Every model in every form, with its params and MACs recorded."""
        from tqdm.auto import tqdm

        torch.manual_seed(self.config.seed)
        variants, macs, start = {}, {}, time.perf_counter()
        for name in tqdm(names, desc="building models", disable=not progress, leave=False):
            model = models[name] if models is not None else create_model(name, **self.config.model_kwargs)
            model.eval()
            macs[name] = count_macs(model, self.input_size)
            self.results["models"][name] = {"params": count_params(model), "macs": macs[name],
                                            "baseline": baselines.get(name), "accuracy": accuracies.get(name)}
            for form in self.config.forms:
                variants[_variant(name, form)] = model if form == "train" else deploy(model).eval()
            self.results["header"]["build_wall_s"] = round(time.perf_counter() - start, 1)
            self.save()
        return variants, macs

    def measure_ceilings(self, sections: list[Section]) -> None:
        for threads in sorted({s.threads for s in sections if s.device == "cpu"}):
            self.results["header"]["matmul_gflops"][str(threads)] = matmul_gflops(threads, self.config.matmul_size)
        self.save()

    def time_section(self, section: Section, variants: dict[str, nn.Module], baselines: dict[str, str],
                     macs: dict[str, int], bar) -> None:
        """Time every variant in alternation for ``section``, recording (and saving) after every round."""
        bar.set_description(section.title)
        self.results["sections"].append(None)
        start = time.perf_counter()

        def record(comparison: Comparison, final: bool = False) -> None:
            self.results["sections"][-1] = {
                **_section_record(section, comparison, macs, self.results["header"]["matmul_gflops"]),
                "wall_s": round(time.perf_counter() - start, 1)}
            if not final:
                bar.update(1)
            self.save(plot=final, force=final)

        comparison = compare(
            variants, baseline=baselines, batch_size=section.batch_size, input_size=self.input_size,
            threads=section.threads, warmup=section.warmup, iters=section.iters, per_round=section.per_round,
            device=section.device, amp_dtype=section.amp_dtype, channels_last=section.channels_last,
            on_round=record)
        record(comparison, final=True)

    def finish(self, interrupted: bool = False) -> None:
        header = self.results["header"]
        header["interrupted"] = interrupted
        header["finished"] = None if interrupted else _now()
        header["load_average_end"] = load_average()
        self.results["sections"] = [s for s in self.results["sections"] if s is not None]
        self.save(plot=True)


def run_benchmark(
    config: BenchConfig = BenchConfig(),
    out_dir: str | Path | None = None,
    *,
    models: Mapping[str, nn.Module] | None = None,
    accuracy_file: str | Path | None = None,
    plot_y: str | None = None,
    command: str | None = None,
    progress: bool = True,
    save_every_s: float = 5.0,
) -> dict:
    """Measure ``config.models`` (or the given ``models``, name -> module) and return the results.

    With ``out_dir``, ``bench.json`` and ``bench.md`` are rewritten as each model is built and
    throughout every section, and ``bench.png`` after each section, so an interrupted run keeps what
    it measured (its sections are marked incomplete). ``plot_y`` is 'macs' or 'accuracy' (default:
    accuracy when ``accuracy_file`` is given).
    """
    from tqdm.auto import tqdm

    names = _model_names(config, models)
    sections = plan_sections(config)
    deploy = load_deploy() if "deploy" in config.forms else None
    accuracies, plot_y = _check_accuracies(accuracy_file, names, plot_y)
    baselines = default_baselines(names, config.baseline)
    run = _BenchRun(config, out_dir, plot_y, command, save_every_s)
    try:
        variants, macs = run.build(names, models, baselines, accuracies, deploy, progress)
        run.measure_ceilings(sections)
        variant_baselines = {_variant(name, form): _variant(base, form)
                             for name, base in baselines.items() for form in config.forms}
        total_rounds = sum(s.iters // s.per_round for s in sections)
        with tqdm(total=total_rounds, desc="timing", unit="round", disable=not progress) as bar:
            for section in sections:
                run.time_section(section, variants, variant_baselines, macs, bar)
    except KeyboardInterrupt:
        run.finish(interrupted=True)
        raise
    run.finish()
    return run.results


def make_bench_config(quick: bool = False, **overrides) -> BenchConfig:
    """The defaults (or :meth:`BenchConfig.quick`'s settings) with the non-``None`` ``overrides`` applied."""
    base = BenchConfig.quick() if quick else BenchConfig()
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
