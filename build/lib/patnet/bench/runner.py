"""The benchmark run: build the models, count their size, then for every planned section (``plan.py``) make
each model's runner in that regime and time them all in alternation, saving results as they come.

Within a section every model, in each form its runtime runs, is timed in alternation with all the others;
ratios are against each model's baseline in the same runtime, precision and form. Each runner's startup
(deploy, export, compile, first call) is recorded apart from its latency.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import InvalidValueError
from ..flops import achieved_gflops, count_macs, count_params
from ..models import baseline_partner, check_model_name, create_model
from ..runtimes import OutputMismatchError, Runner, input_channels, make_runner, native_bf16
from .plan import FORMS, LONG_DTYPE, BenchConfig, Section, native_sections, plan_sections, skipped_regimes
from .report import load_accuracies, load_average, machine_info, write_outputs
from .timing import Comparison, compare_runs, matmul_gflops

GPU_MATMUL_SIZE = 8192


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


def section_forms(config: BenchConfig, section: Section) -> tuple[str, ...]:
    """The eager runtime runs the configured forms; every other runtime runs the deploy form."""
    return config.forms if section.runtime == "eager" else ("deploy",)


def _precision(section: Section) -> str:
    long = LONG_DTYPE[section.dtype]
    return f"amp {long}" if section.amp_dtype else long


def _ceilings(header: dict, section: Section) -> tuple[float | None, float | None]:
    """The fp32 and bf16 matmul GFLOP/s measured for ``section``'s device and threads (None: not measured)."""
    if section.device == "cpu":
        key = str(section.threads)
        return header["matmul_gflops"].get(key), header["matmul_gflops_bf16"].get(key)
    return header["gpu_matmul_gflops"].get("fp32"), header["gpu_matmul_gflops"].get("bf16")


def _section_record(section: Section, comparison: Comparison, macs: Mapping[str, int],
                    ceilings: tuple[float | None, float | None], runners: Mapping[str, Runner]) -> dict:
    """A section's JSON record: settings, and per model and form the statistics, ratio, GFLOP/s against both
    matmul ceilings, and the runner's startup."""
    fp32_ceiling, bf16_ceiling = ceilings
    results: dict[str, dict] = {}
    for variant, stats in comparison.stats.items():
        name, form = variant.rsplit(":", 1)
        gflops = achieved_gflops(macs[name], stats.median_ms / 1e3, section.batch_size)
        ratio, runner = comparison.ratios.get(variant), runners[variant]
        results.setdefault(name, {})[form] = {
            **stats.to_dict(),
            "iqr_ms": stats.iqr_ms,
            "images_per_s": stats.images_per_s(section.batch_size),
            "gflops": gflops,
            "fraction_of_matmul": gflops / fp32_ceiling if fp32_ceiling else None,
            "fraction_of_bf16_matmul": gflops / bf16_ceiling if bf16_ceiling else None,
            "ratio": None if ratio is None else {**ratio.to_dict(), "baseline": ratio.baseline.rsplit(":", 1)[0]},
            "build_s": runner.build_s,
            "first_call_s": runner.first_call_s,
            "relative_diff": runner.relative_diff,
        }
    return {**asdict(section), "precision": comparison.precision, "memory_format": comparison.memory_format,
            "rounds": comparison.rounds, "rounds_planned": comparison.rounds_planned,
            "complete": comparison.complete, "results": results}


def build_runners(section: Section, models: Mapping[str, nn.Module], forms: Sequence[str],
                  seed: int) -> tuple[dict[str, Runner], dict[str, Tensor], dict[str, str]]:
    """Every model's runner for ``section`` (keyed ``name:form``) with its prepared input (one seeded input
    per channel count, so each model gets its own ``in_chans``); runners whose runtime computes the model
    wrongly are left out, with the reason."""
    examples: dict[int, Tensor] = {}
    runners, inputs, not_timed = {}, {}, {}
    for name, model in models.items():
        chans = input_channels(model)
        if chans not in examples:
            generator = torch.Generator().manual_seed(seed)
            examples[chans] = torch.randn(section.batch_size, chans, section.img_size, section.img_size,
                                          generator=generator)
        for form in forms:
            variant = _variant(name, form)
            try:
                runner = make_runner(model, section.runtime, section.dtype, examples[chans], threads=section.threads,
                                     device=section.device, form=form)
            except OutputMismatchError as exc:
                not_timed[name] = str(exc)
                continue
            runners[variant], inputs[variant] = runner, runner.prepare(examples[chans])
    return runners, inputs, not_timed


@contextlib.contextmanager
def _cudnn_benchmark(device: str) -> Iterator[None]:
    """cuDNN's autotuner on for GPU sections (the papers' protocol), restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


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
                 save_every_s: float, skipped: list[dict]):
        self.config, self.plot_y, self.save_every_s = config, plot_y, save_every_s
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.results = {
            "header": {**machine_info(), "command": command, "config": asdict(config), "started": _now(),
                       "finished": None, "interrupted": False, "img_sizes": list(config.img_sizes),
                       "matmul_gflops": {}, "matmul_gflops_bf16": {}, "gpu_matmul_gflops": {}, "skipped": skipped},
            "models": {},
            "sections": [],
        }
        self.last_save = 0.0

    def save(self, plot: bool = False, force: bool = True) -> None:
        if self.out_dir is None or (not force and time.monotonic() - self.last_save < self.save_every_s):
            return
        write_outputs(self.results, self.out_dir, plot_y=self.plot_y if plot else None)
        self.last_save = time.monotonic()

    def build(self, names: list[str], models, baselines: dict[str, str], accuracies: dict[str, float],
              progress: bool) -> tuple[dict[str, nn.Module], dict[int, dict[str, int]]]:
        """Every model (training form, eval mode), with its params and MACs at every image size recorded."""
        from tqdm.auto import tqdm

        torch.manual_seed(self.config.seed)
        built, macs, start = {}, {img: {} for img in self.config.img_sizes}, time.perf_counter()
        for name in tqdm(names, desc="building models", disable=not progress, leave=False):
            model = models[name] if models is not None else create_model(name, **self.config.model_kwargs)
            built[name] = model.eval()
            chans = input_channels(model)
            for img in self.config.img_sizes:
                macs[img][name] = count_macs(model, (chans, img, img))
            self.results["models"][name] = {
                "params": count_params(model), "macs": macs[self.config.img_sizes[0]][name], "in_chans": chans,
                "macs_by_img_size": {str(img): macs[img][name] for img in self.config.img_sizes},
                "baseline": baselines.get(name), "accuracy": accuracies.get(name)}
            self.results["header"]["build_wall_s"] = round(time.perf_counter() - start, 1)
            self.save()
        return built, macs

    def measure_ceilings(self, sections: list[Section]) -> None:
        """fp32 (and, where native, bf16) matmul GFLOP/s on every thread count and device the sections use."""
        header, size = self.results["header"], self.config.matmul_size
        for threads in sorted({s.threads for s in sections if s.device == "cpu"}):
            header["matmul_gflops"][str(threads)] = matmul_gflops(threads, size)
            if native_bf16("cpu"):
                header["matmul_gflops_bf16"][str(threads)] = matmul_gflops(threads, size, dtype=torch.bfloat16)
        if any(s.device == "cuda" for s in sections):
            header["gpu_tf32"] = dict(cudnn=torch.backends.cudnn.allow_tf32,
                                      matmul=torch.backends.cuda.matmul.allow_tf32)
            for dtype in ("fp32", "bf16", "fp16"):
                if dtype != "bf16" or native_bf16("cuda"):
                    header["gpu_matmul_gflops"][dtype] = matmul_gflops(
                        None, GPU_MATMUL_SIZE, device="cuda", dtype=getattr(torch, LONG_DTYPE[dtype]))
        self.save()

    def time_section(self, section: Section, models: dict[str, nn.Module], baselines: dict[str, str],
                     macs: dict[str, int], bar) -> None:
        """Make every model's runner for ``section`` and time them in alternation, recording (and saving)
        after every round."""
        bar.set_description(f"preparing {section.title}")
        self.results["sections"].append(None)
        start = time.perf_counter()
        forms = section_forms(self.config, section)
        runners, inputs, not_timed = build_runners(section, models, forms, self.config.seed)
        startup_wall_s = round(time.perf_counter() - start, 1)
        bar.set_description(section.title)

        def record(comparison: Comparison, final: bool = False) -> None:
            ceilings = _ceilings(self.results["header"], section)
            self.results["sections"][-1] = {
                **_section_record(section, comparison, macs, ceilings, runners), "not_timed": not_timed,
                "startup_wall_s": startup_wall_s, "wall_s": round(time.perf_counter() - start, 1)}
            if not final:
                bar.update(1)
            self.save(plot=final, force=final)

        if not runners:  # every model's runtime computed it wrongly: nothing to time
            bar.update(section.iters // section.per_round)
            record(Comparison({}, {}, section.batch_size, section.threads or 0, section.device, _precision(section),
                              "-", rounds=0, rounds_planned=0), final=True)
            return
        pairs = {_variant(name, form): _variant(base, form) for name, base in baselines.items() for form in forms}
        pairs = {variant: base for variant, base in pairs.items() if variant in runners and base in runners}
        runs = {variant: partial(runner, inputs[variant]) for variant, runner in runners.items()}
        with _cudnn_benchmark(section.device):
            comparison = compare_runs(
                runs, baseline=pairs, batch_size=section.batch_size, threads=section.threads, warmup=section.warmup,
                iters=section.iters, per_round=section.per_round, device=section.device,
                precision=_precision(section), memory_format="channels_last" if section.channels_last else "NCHW",
                settings=dict(img_size=section.img_size), on_round=record)
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
    """Measure ``config.models`` (or the given ``models``, name -> module) in every planned regime and return
    the results.

    With ``out_dir``, ``bench.json`` and ``bench.md`` are rewritten as each model is built and
    throughout every section, and the plots after each section, so an interrupted run keeps what it
    measured (its sections are marked incomplete). ``plot_y`` is 'macs' or 'accuracy' (default:
    accuracy when ``accuracy_file`` is given).
    """
    from tqdm.auto import tqdm

    names = _model_names(config, models)
    sections, skipped = native_sections(plan_sections(config))
    if any(section_forms(config, s) != ("train",) for s in sections):
        load_deploy()
    accuracies, plot_y = _check_accuracies(accuracy_file, names, plot_y)
    baselines = default_baselines(names, config.baseline)
    run = _BenchRun(config, out_dir, plot_y, command, save_every_s, skipped_regimes(config) + skipped)
    try:
        built, macs = run.build(names, models, baselines, accuracies, progress)
        run.measure_ceilings(sections)
        total_rounds = sum(s.iters // s.per_round for s in sections)
        with tqdm(total=total_rounds, desc="timing", unit="round", disable=not progress) as bar:
            for section in sections:
                run.time_section(section, built, baselines, macs[section.img_size], bar)
    except KeyboardInterrupt:
        run.finish(interrupted=True)
        raise
    run.finish()
    return run.results
