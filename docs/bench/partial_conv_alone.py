"""The partial mixers' bf16 3x3 conv alone: ``torch.ops.patnet.partial_conv3x3`` against oneDNN's conv with a
packed weight (``torch.ops.mkldnn._convolution_pointwise``, what eager inference and inductor call), on a channel
slice of a channels-last map as the mixers have it, batch 1; medians of 9 rounds of 200 calls, microseconds, and
the largest difference from a float64 conv of the same bf16 inputs over the output's scale.

    .venv/bin/python docs/bench/partial_conv_alone.py THREADS
"""
import sys
import time

import torch
import torch.nn.functional as F

from patnet.layers import cpu_kernels

SHAPES = [  # (channels, map side, whose): the partial convs of the registered variants at 224 px and of the 64 px model
    (16, 56, "t2 stage 0"), (32, 28, "t2 stage 1"), (64, 14, "t2 stage 2"), (128, 7, "t2 stage 3"),
    (8, 56, "t0 stage 0"), (16, 28, "t0 stage 1"), (32, 14, "t0 stage 2"), (64, 7, "t0 stage 3"),
    (24, 56, "s stage 0"), (48, 28, "s stage 1"), (96, 14, "s stage 2"), (192, 7, "s stage 3"),
    (8, 16, "64 px stage 0"), (16, 8, "64 px stage 1"), (32, 4, "64 px stage 2"), (64, 2, "64 px stage 3"),
]


def median_us(call, calls: int = 200) -> float:
    for _ in range(30):
        call()
    rounds = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        rounds.append((time.perf_counter() - start) / calls)
    return sorted(rounds)[4] * 1e6


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]))
    assert cpu_kernels.available(), "the C++ kernels did not build"
    print("| channels | map | whose | oneDNN us | C++ us | C++ / oneDNN | oneDNN error | C++ error |")
    print("|---|---|---|---|---|---|---|---|")
    for channels, side, whose in SHAPES:
        generator = torch.Generator().manual_seed(channels + side)
        whole = torch.randn(1, 4 * channels, side, side, generator=generator).to(torch.bfloat16)
        x = whole.contiguous(memory_format=torch.channels_last)[:, :channels]
        weight = (torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)).to(torch.bfloat16)
        packed_onednn = torch.ops.mkldnn._reorder_convolution_weight(weight, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
        packed = cpu_kernels.pack_for_partial_conv(weight)

        def onednn():
            return torch.ops.mkldnn._convolution_pointwise(x, packed_onednn, None, [1, 1], [1, 1], [1, 1], 1, "none",
                                                           [], "")

        def kernel():
            return torch.ops.patnet.partial_conv3x3(x, packed, channels)
        exact = F.conv2d(x.double(), weight.double(), padding=1)
        scale = exact.abs().max().item()
        errors = [(run().double() - exact).abs().max().item() / scale for run in (onednn, kernel)]
        theirs, ours = median_us(onednn), median_us(kernel)
        print(f"| {channels} | {side}x{side} | {whose} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f} | "
              f"{errors[0]:.1e} | {errors[1]:.1e} |")


if __name__ == "__main__":
    main()
