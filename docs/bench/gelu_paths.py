"""GELU's two eager CPU paths on the MLP's ``(B*H*W, C)`` rows, alone: the contiguous rows (ATen hands GELU of a
contiguous float tensor to oneDNN) against the same memory as a channels-last ``(B, C, H, W)`` view (ATen's own
vectorized kernel). Microseconds a call, median of 7 repeats of N calls, fp32 and bf16, one and two threads; the
threshold ``FusedMlp.small_activation`` (2^14 elements) comes from where the two cross.

    .venv/bin/python docs/bench/gelu_paths.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(4, 512), (16, 256), (64, 128), (256, 64), (49, 512), (196, 256), (784, 128), (3136, 64)]


def per_call_us(work, calls: int) -> float:
    for _ in range(20):
        work()
    repeats = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            work()
        repeats.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(repeats)


def main() -> None:
    print("| threads | dtype | rows x C | elements | rows (oneDNN) us | map view (ATen) us |")
    print("|---|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            for rows, channels in SHAPES:
                side = int(rows ** 0.5)
                hidden = torch.randn(rows, channels).to(dtype)
                mapped = hidden.view(1, side, side, channels).permute(0, 3, 1, 2)
                calls = max(200, 2_000_000 // hidden.numel())
                on_rows = per_call_us(lambda: F.gelu(hidden), calls)
                on_map = per_call_us(lambda: F.gelu(mapped), calls)
                print(f"| {threads} | {str(dtype)[6:]} | {rows} x {channels} | {hidden.numel()} | {on_rows:.1f} | "
                      f"{on_map:.1f} |")


if __name__ == "__main__":
    main()
