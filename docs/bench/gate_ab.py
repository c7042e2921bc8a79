"""A = the old eager gate (whole (C, 2C) matrix sliced and transposed per call, two unsqueezes), B = shipped."""
import sys, torch, timm, patnet
import torch.nn.functional as F
from patnet.deploy import deploy
from patnet.layers.fused import FusedChannelGate
from patnet.layers.stats import stacked_mean_std
from patnet.bench.timing import time_alternating, summarise
torch.set_num_threads(int(sys.argv[1]))
size, chans, classes, name = (64, 1, 10, "patnet_t0") if sys.argv[2] == "64" else (224, 3, 1000, sys.argv[2])
new = FusedChannelGate.untouched_scale
def old(self, x):
    if "_old" not in self.__dict__:
        w, b = self.whole()
        self.__dict__["_old"] = (torch.nn.Parameter(w.t().contiguous(), requires_grad=False), torch.nn.Parameter(b, requires_grad=False))
    w, b = self.__dict__["_old"]
    return F.hardsigmoid(torch.addmm(b[self.passed:], stacked_mean_std(x), w[self.passed:].t()))[:, :, None, None]
def run(model, x, fn):
    def call():
        FusedChannelGate.untouched_scale = fn
        try:
            return model(x)
        finally:
            FusedChannelGate.untouched_scale = new
    return call
m = deploy(timm.create_model(name, num_classes=classes, in_chans=chans).eval())
f = deploy(timm.create_model(name.replace("patnet", "fasternet"), num_classes=classes, in_chans=chans).eval())
x = torch.randn(1, chans, size, size).contiguous(memory_format=torch.channels_last)
runs = {"A": run(m, x, old), "B": run(m, x, new), "F": lambda: f(x)}
with torch.inference_mode():
    diff = (runs["A"]() - runs["B"]()).abs().max().item()
    t = time_alternating(runs, iters=400, warmup=20, per_round=5)
stats, r = summarise(t, {"A": "F", "B": "F"})
_, ba = summarise(t, {"B": "A"})
print(f"| {name} | {size} | {sys.argv[1]} | {stats['A'].median_ms:.3f} | {stats['B'].median_ms:.3f} | {stats['F'].median_ms:.3f} | {r['A'].median:.3f} | {r['B'].median:.3f} | {ba['B'].median:.3f} | {diff:.1e} |")
