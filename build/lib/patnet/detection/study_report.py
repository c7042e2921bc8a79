"""The detection study's measurements and report: AP over seeds, an untrained floor, size, latency, Markdown,
JSON and an AP-against-latency plot."""
from __future__ import annotations

import json
import os
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..bench import compare
from ..bench.report import load_average, machine_info, markdown_table
from ..deploy import deploy
from ..engine import checkpoint as ckpt
from ..fileio import write_text_atomic
from ..flops import count_macs, count_params
from ..plotting import pyplot, save_figure
from ..study.report import format_duration, format_mean_std, mean_std
from .coco_eval import evaluate_results
from .data import build_splits
from .engine import build_model
from .inference import detect_dataset, load_detector
from .models import deploy_detector

METRICS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")
BASELINE = "fasternet_t0"
JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "results.md", "ap_vs_latency.png"


@torch.no_grad()
def untrained_ap(run) -> dict[str, float]:
    """Box and mask AP of ``run``'s detector before detection training (pretrained backbone, random heads)."""
    torch.manual_seed(run.config.seed)
    data = build_splits(run.config)
    model = build_model(run.config, data).eval()
    results = detect_dataset(model, data.val_set, run.config.batch_size)
    metrics = evaluate_results(data.val_set.coco, results, ("bbox", "segm"), image_ids=data.val_set.image_ids)
    return {key: metrics[key] for key in ("bbox_AP", "segm_AP")}


class CycleImages(nn.Module):
    """A detector run on the next of a fixed list of images at every call (the timing harness's input is
    ignored), so both detectors of a comparison see the same real images in the same order."""

    def __init__(self, model: nn.Module, images: list[torch.Tensor]):
        super().__init__()
        self.model, self.images, self.calls = model, images, 0

    def forward(self, _: torch.Tensor):
        image = self.images[self.calls % len(self.images)]
        self.calls += 1
        return self.model([image])


def detector_macs(model: nn.Module, image: torch.Tensor) -> int:
    """Multiply-adds of convolutions and matrix products of one detector call (RoIAlign and NMS not counted)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()([image])
    return counter.get_total_flops() // 2


def measure(runs: list, plan) -> dict[str, dict]:
    """Per backbone (its seed-0 detector): params, MACs, and single-thread batch-1 latency of the backbone and of
    the whole detector, deploy form, every backbone timed in alternation with the others."""
    models, sizes = {}, {}
    first = [run for run in runs if run.seed == 0]
    val_set = build_splits(first[0].config).val_set
    images = [val_set[i][0] for i in range(min(plan.latency_images, len(val_set)))]
    for run in first:
        model, meta = load_detector(run.dir)
        size = (meta["in_chans"], meta["min_size"], meta["min_size"])
        sizes[run.backbone] = dict(backbone_params=count_params(model.backbone.body),
                                   backbone_macs=count_macs(model.backbone.body, size),
                                   detector_params=count_params(model), detector_macs=detector_macs(model, images[0]),
                                   input_size=list(size))
        models[run.backbone] = model
    baseline = BASELINE if BASELINE in models else next(iter(models))
    timing = dict(baseline=baseline, threads=1, warmup=plan.latency_warmup, iters=plan.latency_iters)
    size = tuple(sizes[baseline]["input_size"])
    backbones = compare({k: deploy(m.backbone.body) for k, m in models.items()}, input_size=size, **timing)
    detectors = compare({k: CycleImages(deploy_detector(m), images) for k, m in models.items()},
                        input_size=(1, 1, 1), **timing)
    measured = {}
    for key in models:
        measured[key] = dict(sizes[key], **_latency("backbone", backbones, key), **_latency("detector", detectors, key))
    return measured


def _latency(prefix: str, comparison, key: str) -> dict:
    ratio = comparison.ratios.get(key)  # the baseline has none: 1 by definition
    return {f"{prefix}_ms": comparison.stats[key].median_ms, f"{prefix}_ratio": ratio.median if ratio else 1.0,
            f"{prefix}_ratio_p10": ratio.p10 if ratio else 1.0, f"{prefix}_ratio_p90": ratio.p90 if ratio else 1.0}


def summarize(runs: list, measured: dict, floor: dict) -> list[dict]:
    """One row per backbone: final-epoch AP of each seed, mean and std, the untrained floor, size and latency."""
    rows = []
    for backbone in dict.fromkeys(run.backbone for run in runs):
        mine = [run for run in runs if run.backbone == backbone]
        finals = [ckpt.load_state(ckpt.resolve_checkpoint(run.dir))["history"][-1] for run in mine]
        row = dict(backbone=backbone, seeds=[run.seed for run in mine], untrained=floor[backbone],
                   train_images_per_s=statistics.fmean(f["images_per_s"] for f in finals), **measured[backbone])
        for metric in METRICS:
            values = [f[metric] for f in finals]
            row[metric] = values
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values)
        rows.append(row)
    return rows


def findings(rows: list[dict]) -> list[str]:
    """Which backbone wins on boxes and masks, by how much, against the seed spread and the latency."""
    by = {row["backbone"]: row for row in rows}
    if set(by) != {"patnet_t0", "fasternet_t0"}:
        return []
    pat, base = by["patnet_t0"], by["fasternet_t0"]
    lines = []
    for metric, name in (("bbox_AP", "box AP"), ("segm_AP", "mask AP")):
        gap = pat[f"{metric}_mean"] - base[f"{metric}_mean"]
        spread = (pat[f"{metric}_std"] or 0.0) + (base[f"{metric}_std"] or 0.0)
        verdict = "larger than" if abs(gap) > spread else "within"
        lines.append(f"PATNet-T0 minus FasterNet-T0, {name}: {gap:+.2f} points ({verdict} the seed spread, the sum "
                     f"of the two seed std: {spread:.2f}).")
    lines.append(f"Latency (one thread): PATNet-T0's backbone at {pat['backbone_ratio']:.2f}x FasterNet-T0's, the "
                 f"whole detector at {pat['detector_ratio']:.2f}x; backbone MACs {pat['backbone_macs'] / 1e6:.1f} M "
                 f"against {base['backbone_macs'] / 1e6:.1f} M.")
    for row in rows:
        floor = row["untrained"]
        lines.append(f"{row['backbone']}: trained box AP {row['bbox_AP_mean']:.2f} against {floor['bbox_AP']:.2f} "
                     f"untrained (mask AP {row['segm_AP_mean']:.2f} against {floor['segm_AP']:.2f}).")
    return lines


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# Detection study ({results['plan']}): Mask R-CNN on Fashion-MNIST scenes, PATNet-T0 against "
             "FasterNet-T0 backbones", "",
             f"- Command: `{results['command']}`",
             f"- Wall time: {format_duration(results['wall_s'])} over {len(results['invocations'])} invocation(s)",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['cpu_capability']}; torch {m['torch']}; load average "
             f"{results['load_average_end']} when latency was measured",
             "- Scenes: " + ", ".join(f"{k}={v}" for k, v in results["scenes"].items()),
             "- Pretraining (Fashion-MNIST classification, both backbones): " + ", ".join(
                 f"{k}={v}" for k, v in results["pretrain"].items()),
             "- Detection recipe (every run): " + ", ".join(f"{k}={v}" for k, v in results["detect"].items()),
             f"- Finished {results['finished']}", ""]
    headers = ["Backbone", "Seeds", "Box AP", "AP50", "AP75", "Mask AP", "AP50", "AP75", "Untrained box/mask AP",
               "Backbone params (M)", "Backbone MACs (M)", "Backbone ms", "/ FasterNet", "Detector ms", "/ FasterNet"]
    table = [[row["backbone"], str(len(row["seeds"])),
              *(format_mean_std(row[f"{k}_mean"], row[f"{k}_std"]) for k in METRICS),
              f"{row['untrained']['bbox_AP']:.2f} / {row['untrained']['segm_AP']:.2f}",
              f"{row['backbone_params'] / 1e6:.2f}", f"{row['backbone_macs'] / 1e6:.1f}", f"{row['backbone_ms']:.2f}",
              f"{row['backbone_ratio']:.2f} [{row['backbone_ratio_p10']:.2f}, {row['backbone_ratio_p90']:.2f}]",
              f"{row['detector_ms']:.1f}",
              f"{row['detector_ratio']:.2f} [{row['detector_ratio_p10']:.2f}, {row['detector_ratio_p90']:.2f}]"]
             for row in results["rows"]]
    lat = results["latency"]
    lines += [markdown_table(headers, table, text_columns=1), "",
              "AP: COCOeval on the validation canvases (made from Fashion-MNIST's test images) after the last epoch, "
              "in percent, mean ± sample std over seeds; nothing is chosen on the validation canvases. Untrained: "
              "the seed-0 detector before detection training (pretrained backbone, random heads). Latency: deploy "
              f"form, batch 1, 1 thread, {lat['warmup']} warm-up + {lat['iters']} timed calls, both backbones timed "
              "in alternation, median; the ratio is the median of per-round ratios [p10, p90]. Backbone: features at "
              f"{'x'.join(map(str, results['rows'][0]['input_size']))}; detector: the whole Mask R-CNN on "
              f"{lat['images']} validation canvases in turn.", "", f"![AP against latency]({PLOT_NAME})", "",
              "## Per seed", ""]
    lines += [markdown_table(["Backbone", "Seed", *METRICS],
                             [[row["backbone"], str(seed), *(f"{row[k][i]:.2f}" for k in METRICS)]
                              for row in results["rows"] for i, seed in enumerate(row["seeds"])], text_columns=1), ""]
    lines += ["## Findings", "", *(f"- {line}" for line in findings(results["rows"])), ""]
    return "\n".join(lines)


def plot(results: dict, path: str | os.PathLike) -> None:
    """Box and mask AP (mean, seed std as error bars) against whole-detector latency, one point per backbone."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.8), dpi=150)
    for index, row in enumerate(results["rows"]):
        for metric, marker, fill in (("bbox_AP", "o", "full"), ("segm_AP", "s", "none")):
            ax.errorbar(row["detector_ms"], row[f"{metric}_mean"], yerr=row[f"{metric}_std"] or 0, fmt=marker,
                        color=f"C{index}", fillstyle=fill, capsize=3, markersize=7,
                        label=f"{row['backbone']}, {'box' if metric == 'bbox_AP' else 'mask'} AP")
    ax.set_xlabel("Mask R-CNN latency, deploy form, batch 1, 1 thread (ms, median)")
    ax.set_ylabel("COCO AP on the validation scenes (%)")
    ax.set_title(f"Detection study '{results['plan']}': {results['machine']['cpu']}", fontsize=9)
    ax.grid(True, linestyle=":", linewidth=0.8)
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=150)


def write_report(plan, runs: list, floor: dict, measured: dict, invocations: list[dict], command: str,
                 report_dir: Path) -> dict:
    """Write ``results.json``, ``results.md`` and the plot to ``report_dir``; return the results."""
    rows = summarize(runs, measured, floor)
    per_run = ("backbone", "backbone_weights", "seed", "output", "data_dir", "device", "workers", "scenes")
    recipe = {k: v for k, v in runs[0].config.to_dict().items() if k not in per_run and v not in (None, {})}
    results = dict(plan=plan.name, command=command, machine=machine_info(), load_average_end=load_average(),
                   invocations=invocations, wall_s=sum(i["wall_s"] for i in invocations), scenes=plan.scenes,
                   pretrain=plan.pretrain, detect=recipe, rows=rows,
                   latency=dict(warmup=plan.latency_warmup, iters=plan.latency_iters, images=plan.latency_images),
                   finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text_atomic(report_dir / JSON_NAME, json.dumps(results, indent=1) + "\n")
    write_text_atomic(report_dir / MARKDOWN_NAME, to_markdown(results))
    plot(results, report_dir / PLOT_NAME)
    return results
