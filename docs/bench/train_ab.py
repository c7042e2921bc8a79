"""One-process A/B of a change to the training form: training img/s of PATNet with and without it.

A = PATNet with the change undone, B = PATNet as shipped, F = FasterNet; same initial weights for A and B,
Fashion-MNIST-shaped random batches (128 x 1 x 64 x 64, 10 classes; or SIZE px and BATCH), forward + backward +
AdamW, eager or compiled, fp32 or bf16 autocast; each training step timed, in rotating rounds of 5 steps of each
(``patnet.bench.timing.time_alternating``); step-time ratios are medians of per-round ratios (below 1: faster).
Changes (what A is):

  contiguous-grad  before: the training form's post-gate BatchNorms (PAT_ch's, PAT_sp's) take torch.cat's strided
                   gradient slice in their backward (patnet.layers.partial.contiguous_grad undone)
  summed-stats     before: the training form's gate statistics take means (spatial_mean_std without summed=True)
  conv-gate        before: PAT_ch's gate runs its (1, 2) conv as a conv on the 1 x 2 map of statistics, not as
                   the matrix product of the flattened statistics and weight
  fp32-gate        candidate, not kept: PAT_ch's gate branch (statistics, scale, post-gate BN) in fp32 under bf16
                   autocast, where ATen's bf16 broadcasts over 4x4 maps are slow

    .venv/bin/python docs/bench/train_ab.py CHANGE {fp32|bf16} {eager|compile} [MODEL] [STEPS] [SIZE BATCH]
"""
import itertools
import sys

import torch
from change_ab import under

from patnet.bench.timing import summarise, time_alternating
from patnet.layers import partial
from patnet.models import baseline_partner, create_model

SHIPPED_MEAN_STD = partial.spatial_mean_std


def fp32_gate_forward(self, x):
    convolved, untouched = torch.split(x, [self.conv_dim, self.untouched_dim], dim=1)
    untouched = untouched.float()
    gated = partial.contiguous_grad(self.norm(untouched * self.gate(untouched)))
    return torch.cat((self.conv(convolved), gated.to(x.dtype)), dim=1)


def conv_gate_forward(self, x):
    stats = torch.cat(partial.spatial_mean_std(x, summed=True), dim=3)
    return torch.nn.functional.hardsigmoid(self.norm(self.conv(stats)))


CHANGES = {"conv-gate": [(partial.GaussianChannelGate, "forward", conv_gate_forward)],
           "fp32-gate": [(partial.PartialChannelAttn, "forward", fp32_gate_forward)],
           "contiguous-grad": [(partial, "contiguous_grad", lambda x: x)],
           "summed-stats": [(partial, "spatial_mean_std", lambda x, summed=False: SHIPPED_MEAN_STD(x))]}


def trainer(name: str, compiled: bool, bf16: bool, size: int, batch: int):
    """One AdamW training step of ``name`` per call, cycling over four fixed random batches."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    run = torch.compile(model) if compiled else model
    data = torch.Generator().manual_seed(1)
    batches = itertools.cycle([(torch.randn(batch, 1, size, size, generator=data),
                                torch.randint(0, 10, (batch,), generator=data)) for _ in range(4)])

    def step() -> None:
        images, targets = next(batches)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(run(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    change, precision, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    name = sys.argv[4] if len(sys.argv) > 4 else "patnet_t0"
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 60
    size, batch = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else (64, 128)
    compiled, bf16 = mode == "compile", precision == "bf16"
    setup = (compiled, bf16, size, batch)
    runs = {"A": under(CHANGES[change], trainer(name, *setup)), "B": trainer(name, *setup),
            "F": trainer(baseline_partner(name), *setup)}
    times = time_alternating(runs, iters=steps, warmup=5, per_round=5)
    stats, against = summarise(times, {"A": "F", "B": "F"})
    _, new_old = summarise(times, {"B": "A"})
    rates = " | ".join(f"{batch / (stats[key].median_ms / 1e3):.0f}" for key in "ABF")
    ratio = new_old["B"]
    print(f"| {change} | {name} {size} px, batch {batch} | {mode} {precision} | {torch.get_num_threads()} | {rates} | "
          f"{against['A'].median:.3f} | {against['B'].median:.3f} | "
          f"{ratio.median:.3f} ({ratio.p10:.3f}-{ratio.p90:.3f}) |")


if __name__ == "__main__":
    main()
