"""Micro-benchmarks behind two training-form findings (docs/bench/training.md), at batch 128, two threads:

- a BatchNorm's forward and backward with a contiguous gradient and with a strided channel slice of a wider
  gradient (what ``torch.cat``'s backward hands its inputs), fp32 and bf16;
- the gate's multiply and the spatial statistics, forward and backward, on a bf16 channel slice as they run,
  and with an fp32 detour (cast in, compute, cast out);
- the statistics' forward and backward with means and with sums divided by the count (``summed=True``).

    .venv/bin/python docs/bench/train_micro.py
"""
import time

import torch

from patnet.layers.stats import spatial_mean_std

BATCH = 128


def microseconds(work, calls: int = 50) -> float:
    for _ in range(5):
        work()
    start = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - start) / calls * 1e6


def batchnorm_gradient_layout() -> None:
    for channels, side in ((96, 4), (24, 16), (48, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            norm = torch.nn.BatchNorm2d(channels).train()
            x = torch.randn(BATCH, channels, side, side, dtype=dtype, requires_grad=True)
            wide = torch.randn(BATCH, channels + 32, side, side, dtype=dtype)
            times = [microseconds(lambda grad=grad: norm(x).backward(grad))
                     for grad in (wide[:, 32:].contiguous(), wide[:, 32:])]
            print(f"BatchNorm {channels}x{side}x{side} {dtype}: contiguous gradient {times[0]:.0f} us, "
                  f"slice {times[1]:.0f} us")


def broadcast_detour() -> None:
    for channels, side in ((128, 4), (64, 8), (32, 16)):
        x = torch.randn(BATCH, channels, side, side, dtype=torch.bfloat16, requires_grad=True)
        passed = channels // 4
        gate = torch.rand(BATCH, channels - passed, 1, 1, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(BATCH, channels - passed, side, side, dtype=torch.bfloat16)
        untouched = lambda: x[:, passed:]  # noqa: E731
        mul = microseconds(lambda: (untouched() * gate).backward(grad))
        mul_fp32 = microseconds(lambda: (untouched().float() * gate.float()).to(x.dtype).backward(grad))
        stats = microseconds(lambda: sum(s.sum() for s in spatial_mean_std(untouched())).backward())
        stats_fp32 = microseconds(lambda: sum(s.sum() for s in spatial_mean_std(untouched().float())).backward())
        print(f"bf16 {channels}x{side}x{side}: gate multiply {mul:.0f} us, fp32 detour {mul_fp32:.0f} us; "
              f"statistics {stats:.0f} us, fp32 detour {stats_fp32:.0f} us")


def summed_statistics() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for channels, side in ((128, 4), (64, 8), (32, 16), (16, 32)):
            x = torch.randn(BATCH, channels, side, side, dtype=dtype, requires_grad=True)
            times = [microseconds(lambda summed=summed: sum(
                s.sum() for s in spatial_mean_std(x[:, channels // 4:], summed=summed)).backward())
                for summed in (False, True)]
            print(f"statistics {dtype} {channels}x{side}x{side}: means {times[0]:.0f} us, sums {times[1]:.0f} us")


if __name__ == "__main__":
    torch.set_num_threads(2)
    batchnorm_gradient_layout()
    broadcast_detour()
    summed_statistics()
