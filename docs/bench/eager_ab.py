"""One-process A/B of small eager changes to the deploy form, each against an emulation of the code before it.

A = the form before the change, B = the shipped form, F = FasterNet's deploy form; batch 1, eager fp32,
channels-last, 20 warm-up + 400 timed calls each in rotating 5-call rounds; ratios are medians of per-round
ratios. Changes:
  gate      PAT_ch's gate as the whole (C, 2C) matrix, sliced to the gated rows and transposed per call
  residual  the MLP's residual added as (B*H*W, C) rows instead of on the output's map view

    .venv/bin/python docs/bench/eager_ab.py CHANGE THREADS {64|patnet_t0|patnet_t2}
"""
import sys

import timm
import torch
import torch.nn.functional as F

import patnet  # noqa: F401
from patnet.bench.timing import summarise, time_alternating
from patnet.deploy import deploy
from patnet.layers.fused import FusedChannelGate, FusedMlp
from patnet.layers.stats import stacked_mean_std


def gate_before(self, x):
    if "_before" not in self.__dict__:
        weight, bias = self.whole()
        self.__dict__["_before"] = (torch.nn.Parameter(weight.t().contiguous(), requires_grad=False),
                                    torch.nn.Parameter(bias, requires_grad=False))
    weight, bias = self.__dict__["_before"]
    stats = stacked_mean_std(x)
    return F.hardsigmoid(torch.addmm(bias[self.passed:], stats, weight[self.passed:].t()))[:, :, None, None]


def residual_before(self, x, residual):
    batch, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    residual_rows = None if residual is None else residual.permute(0, 2, 3, 1).reshape(rows.shape)
    hidden = self.act(torch.addmm(self.expand_bias, rows, self.expand_weight))
    out = torch.addmm(self.project_bias, hidden, self.project_weight)
    if residual_rows is not None:
        out = out.add_(residual_rows)
    return out.view(batch, height, width, channels).permute(0, 3, 1, 2)


CHANGES = {"gate": (FusedChannelGate, "untouched_scale", gate_before),
           "residual": (FusedMlp, "_on_rows", residual_before)}


def main() -> None:
    change, threads, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(threads)
    size, chans, classes, name = (64, 1, 10, "patnet_t0") if case == "64" else (224, 3, 1000, case)
    owner, method, before = CHANGES[change]
    shipped = getattr(owner, method)

    def run(model, x, fn):
        def call():
            setattr(owner, method, fn)
            try:
                return model(x)
            finally:
                setattr(owner, method, shipped)
        return call

    model = deploy(timm.create_model(name, num_classes=classes, in_chans=chans).eval())
    partner = deploy(timm.create_model(name.replace("patnet", "fasternet"), num_classes=classes, in_chans=chans).eval())
    x = torch.randn(1, chans, size, size).contiguous(memory_format=torch.channels_last)
    runs = {"A": run(model, x, before), "B": run(model, x, shipped), "F": lambda: partner(x)}
    with torch.inference_mode():
        diff = (runs["A"]() - runs["B"]()).abs().max().item()
        times = time_alternating(runs, iters=400, warmup=20, per_round=5)
    stats, against = summarise(times, {"A": "F", "B": "F"})
    _, new_old = summarise(times, {"B": "A"})
    ms = " | ".join(f"{stats[k].median_ms:.3f}" for k in "ABF")
    print(f"| {name} | {size} | {threads} | {ms} | {against['A'].median:.3f} | {against['B'].median:.3f} | "
          f"{new_old['B'].median:.3f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
