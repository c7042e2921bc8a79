"""The AVX512-BF16 kernels alone against the oneDNN calls they replace (what eager inference and inductor call),
batch 1, medians of 9 rounds of 200 calls, microseconds, and the largest difference from float64 on the same bf16
inputs over the output's scale:

- the partial mixers' 3x3 conv, ``torch.ops.patnet.partial_conv3x3`` against ``torch.ops.mkldnn._convolution_pointwise``
  with a packed weight, on a channel slice of a channels-last map as the mixers have it;
- the MLP's and PAT_sf's products with ReLU, ``torch.ops.patnet.bf16_linear`` against
  ``torch.ops.mkldnn._linear_pointwise`` with a packed weight.

    .venv/bin/python docs/bench/bf16_dot_alone.py THREADS
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


PRODUCTS = [  # (rows, in, out, whose): every product of patnet_t0, and patnet_t2's, at 224 px; the 64 px model's
    (3136, 32, 64, "t0 stage 0 expand"), (3136, 64, 32, "t0 stage 0 project"), (784, 64, 128, "t0 stage 1 expand"),
    (784, 128, 64, "t0 stage 1 project"), (196, 128, 256, "t0 stage 2 expand"), (196, 256, 128, "t0 stage 2 project"),
    (49, 256, 512, "t0 stage 3 expand"), (49, 512, 256, "t0 stage 3 project"), (49, 192, 576, "t0 qkv"),
    (49, 192, 192, "t0 proj"), (3136, 64, 128, "t2 stage 0 expand"), (196, 256, 512, "t2 stage 2 expand"),
    (49, 512, 1024, "t2 stage 3 expand"), (49, 384, 1152, "t2 qkv"), (49, 384, 384, "t2 proj"),
    (256, 32, 64, "64 px stage 0 expand"), (16, 128, 256, "64 px stage 2 expand"),
    (4, 256, 512, "64 px stage 3 expand"),
]


def error(run, exact) -> float:
    return (run().double() - exact).abs().max().item() / exact.abs().max().item()


def products() -> None:
    print("| rows | in | out | whose | oneDNN us | C++ us | C++ / oneDNN | oneDNN error | C++ error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, depth, width, whose in PRODUCTS:
        generator = torch.Generator().manual_seed(rows + depth)
        x = torch.randn(rows, depth, generator=generator).to(torch.bfloat16)
        matrix = (torch.randn(depth, width, generator=generator) / depth ** 0.5).to(torch.bfloat16)
        bias = torch.randn(width, generator=generator).to(torch.bfloat16)
        packed_onednn = torch.ops.mkldnn._reorder_linear_weight(matrix.t().contiguous(), rows)
        packed = cpu_kernels.pack_pairs(matrix)

        def onednn():
            return torch.ops.mkldnn._linear_pointwise(x, packed_onednn, bias, "relu", [], "")

        def kernel():
            return torch.ops.patnet.bf16_linear(x, packed, bias, width, "relu", None)
        exact = torch.relu(torch.addmm(bias.double(), x.double(), matrix.double()))
        theirs, ours = median_us(onednn), median_us(kernel)
        print(f"| {rows} | {depth} | {width} | {whose} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f} | "
              f"{error(onednn, exact):.1e} | {error(kernel, exact):.1e} |")


def convs() -> None:
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
        theirs, ours = median_us(onednn), median_us(kernel)
        print(f"| {channels} | {side}x{side} | {whose} | {theirs:.1f} | {ours:.1f} | {ours / theirs:.2f} | "
              f"{error(onednn, exact):.1e} | {error(kernel, exact):.1e} |")


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]))
    assert cpu_kernels.available(), "the C++ kernels did not build"
    convs()
    print()
    products()


if __name__ == "__main__":
    main()
