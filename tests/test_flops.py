"""MAC counter exactness against hand-computed counts (measurement.md: FlopCounterMode / 2, math attention)."""
import pytest
import timm
import torch
from timm.layers import Attention
from torch import nn

import patnet  # noqa: F401
from patnet.deploy import deploy
from patnet.flops import achieved_gflops, count_macs, count_params


class TokenAttention(nn.Module):
    """timm's fused-attention block applied to the pixels of a ``(B, C, H, W)`` map as tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = Attention(dim, num_heads=heads, qkv_bias=False)
        self.attn.fused_attn = True  # the F.scaled_dot_product_attention path, which needs the math backend

    def forward(self, x):
        return self.attn(x.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("groups, stride", [(1, 1), (2, 2)])
def test_conv_macs_are_exact(groups, stride):
    c_in, c_out, k, size = 4, 6, 3, 12
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1, groups=groups)
    out = size // stride
    expected = c_out * out * out * (c_in // groups) * k * k
    assert count_macs(conv, (c_in, size, size)) == expected


def test_linear_macs_are_exact():
    # nn.Linear on the last axis of a (1, 3, 5, 7) input: 3 * 5 rows of 7 -> 11 products.
    linear = nn.Linear(7, 11)
    assert count_macs(linear, (3, 5, 7)) == 3 * 5 * 7 * 11


def test_attention_block_macs_are_exact():
    dim, heads, side = 16, 4, 6
    tokens = side * side
    qkv, proj = tokens * dim * 3 * dim, tokens * dim * dim
    scores, weighted_sum = tokens * tokens * dim, tokens * tokens * dim  # all heads together
    expected = qkv + scores + weighted_sum + proj
    assert count_macs(TokenAttention(dim, heads), (dim, side, side)) == expected


def test_macs_scale_with_batch_size():
    conv = nn.Conv2d(3, 5, 1, bias=False)
    assert count_macs(conv, (3, 4, 4), batch_size=3) == 3 * 5 * 3 * 4 * 4


def test_count_macs_rejects_a_bad_input_size():
    with pytest.raises(ValueError, match="channels, height, width"):
        count_macs(nn.Identity(), (3, 224))


def test_count_params_and_achieved_gflops():
    assert count_params(nn.Linear(7, 11)) == 7 * 11 + 11
    assert achieved_gflops(macs=10**9, seconds=0.5) == pytest.approx(4.0)
    assert achieved_gflops(macs=10**9, seconds=0.5, batch_size=8) == pytest.approx(32.0)
    with pytest.raises(ValueError, match="positive"):
        achieved_gflops(10**9, 0.0)


def test_count_macs_keeps_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    count_macs(model, (3, 8, 8))
    assert model.training
    assert torch.equal(model[1].running_mean, torch.zeros(4))  # eval mode during the count: stats untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deployed_patnet_counts_its_training_forms_macs(dtype):
    """The deploy form's inference-only kernels (oneDNN's prepacked products: bf16 everywhere, fp32 on AMD; the
    C++ gate) are invisible to FlopCounterMode; counting runs the differentiable operators instead."""
    model = timm.create_model("patnet_t0", num_classes=10).eval()
    trained = count_macs(model)  # at 224 px, where the products are large enough for oneDNN
    deployed = count_macs(deploy(model).to(dtype))
    assert abs(deployed - trained) <= 0.01 * trained  # the deploy gate multiplies all channels' statistics
    assert not any(p.grad is not None for p in model.parameters())
