"""Detection speed: PATNet against FasterNet backbones under torchvision's FPN and Mask R-CNN, on this CPU.

Protocol (shared/spec/measurement.md): batch 1, one thread, fp32, inference mode, backbones in deploy form
(BNs folded), the two models of a pair timed in alternation in one process; the ratio is the median of
per-round ratios (p10-p90 in brackets). Three measurements per pair:

- the backbone alone, and backbone + FPN (256 channels, strides 4-32 and a pooled level), on a 3 x 800 x 1344
  input: COCO's 1333 x 800 resize padded to a multiple of 32, as Mask R-CNN feeds its backbone;
- the whole Mask R-CNN (the `fm-scenes` preset) on a 1 x 128 x 128 canvas, with the score threshold at 0 so
  both detectors keep the same number of detections (the preset's 30) and their heads do the same work.

    .venv/bin/python scripts/detection_speed.py            # writes docs/detection/speed.md and speed.json
    .venv/bin/python scripts/detection_speed.py --quick    # a smoke test
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import timm
import torch
from torch import nn

import patnet
from patnet.bench import compare
from patnet.bench.report import machine_info
from patnet.detection import build_detector
from patnet.detection.config import DATASETS, PRESETS
from patnet.detection.models import deploy_detector
from patnet.fileio import write_text_atomic

PAIRS = [("patnet_s", "fasternet_s"), ("patnet_t0", "fasternet_t0")]
COCO_INPUT = (3, 800, 1344)
SCENE_INPUT = (1, 128, 128)


class Detector(nn.Module):
    """A torchvision detector called on a batch tensor (as the timing harness calls models)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(list(x))


def backbone_with_fpn(name: str) -> nn.Module:
    return deploy_detector(build_detector("maskrcnn", name, 80, min_size=800, max_size=1333)).backbone


def scene_detector(name: str) -> nn.Module:
    preset = PRESETS["fm-scenes"]
    data = DATASETS["fm-scenes"]
    kwargs = dict(preset["detector_kwargs"], box_score_thresh=0.0)
    model = build_detector("maskrcnn", name, 10, in_chans=1, image_mean=data.mean, image_std=data.std,
                           min_size=preset["min_size"], max_size=preset["max_size"],
                           fpn_channels=preset["fpn_channels"], anchor_sizes=preset["anchor_sizes"],
                           box_head_dim=preset["box_head_dim"], mask_head_layers=preset["mask_head_layers"], **kwargs)
    return Detector(deploy_detector(model))


def ratio_row(comparison, name: str, base: str) -> dict:
    ratio, stats, base_stats = comparison.ratios[name], comparison.stats[name], comparison.stats[base]
    return dict(model=name, baseline=base, model_ms=stats.median_ms, baseline_ms=base_stats.median_ms,
                ratio=ratio.median, ratio_p10=ratio.p10, ratio_p90=ratio.p90)


def backbone_alone(name: str) -> nn.Module:
    """The deployed backbone's feature maps (what the FPN receives)."""
    return backbone_with_fpn(name).body


SECTIONS = {  # key: (title, model builder, input)
    "backbone": ("Backbone alone at 3 x 800 x 1344 (its four feature maps)", backbone_alone, COCO_INPUT),
    "backbone_fpn": ("Backbone + FPN at 3 x 800 x 1344 (COCO's 1333 x 800, padded to a multiple of 32)",
                     backbone_with_fpn, COCO_INPUT),
    "detector": ("Whole Mask R-CNN (`fm-scenes` preset) on a 1 x 128 x 128 canvas, 30 detections kept",
                 scene_detector, SCENE_INPUT),
}


def measure(iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    rows = {key: [] for key in SECTIONS}
    for key, (_, build, input_size) in SECTIONS.items():
        for name, base in PAIRS:
            models = {name: build(name), base: build(base)}
            result = compare(models, baseline=base, input_size=input_size, threads=1, warmup=warmup, iters=iters)
            rows[key].append(ratio_row(result, name, base))
            print(key, rows[key][-1], flush=True)
    return rows


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Detection speed: PATNet against FasterNet backbones", "",
             f"- Command: `{results['command']}` ({results['wall_s'] / 60:.1f} min)",
             f"- Machine: {m['cpu']}, {m['cores']} cores, {m['cpu_capability']}; torch {m['torch']}, timm {m['timm']}",
             f"- Protocol: batch 1, 1 thread, fp32, deploy form, {results['warmup']} warm-up + {results['iters']} "
             "timed calls per model, the two models timed in alternation; ratio = median of per-round ratios "
             "(p10-p90)", ""]
    for key, (title, _, _) in SECTIONS.items():
        lines += [f"## {title}", "", "| model | ms | FasterNet ms | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['model_ms']:.1f} | {r['baseline_ms']:.1f} | {r['ratio']:.3f} "
                  f"({r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}) |" for r in results.get(key, [])] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 timed calls")
    parser.add_argument("--out", default="docs/detection")
    args = parser.parse_args()
    iters, warmup = (2, 1) if args.quick else (30, 3)
    start = time.time()
    rows = measure(iters, warmup)
    command = "python scripts/detection_speed.py" + (" --quick" if args.quick else "")
    results = dict(command=command, machine=machine_info(), iters=iters, warmup=warmup, **rows,
                   wall_s=time.time() - start, patnet=patnet.__version__, python=platform.python_version(),
                   timm=timm.__version__)
    out = Path(args.out)
    write_text_atomic(out / "speed.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(out / "speed.md", to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
