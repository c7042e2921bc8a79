"""Shared test utilities."""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def randomize_inference_state(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-default statistics and affine parameters, and every relative-position
    table random values, so tests exercise them (defaults would make BNs near-identities)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
    for name, param in model.named_parameters():
        if name.endswith("bias_table"):
            param.copy_(torch.randn(param.shape, generator=gen))
    return model


def fixed_input(*shape: int) -> torch.Tensor:
    """A deterministic, RNG-free input with structure in every channel and position."""
    numel = 1
    for s in shape:
        numel *= s
    return torch.sin(torch.arange(numel, dtype=torch.float32) * 0.37).reshape(shape)


def relative_error(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """``max |expected - actual| / max |expected|``, computed in fp32."""
    expected, actual = expected.float(), actual.float()
    return ((expected - actual).abs().max() / expected.abs().max()).item()


def pat_block_pair(mixer: str, spatial_attn: bool, dim: int = 48, seed: int = 0):
    """A PATNet block with random inference state (eval mode) and its reparameterized (deploy) copy."""
    from patnet.models.patnet import PatBlock

    torch.manual_seed(seed)
    block = PatBlock(dim, mixer, spatial_attn=spatial_attn, num_heads=4, act_layer=nn.GELU)
    block = randomize_inference_state(block, seed=seed).eval()
    fused = copy.deepcopy(block)
    fused.reparameterize()
    return block, fused


def recorded(monkeypatch, owner, name: str) -> list:
    """The shapes of the first tensor argument of every call of ``owner.name`` (a method or a module's function,
    e.g. a C++ call's wrapper) from now on."""
    calls, original = [], getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(tuple(next(arg for arg in args if isinstance(arg, torch.Tensor)).shape))
        return original(*args, **kwargs)
    monkeypatch.setattr(owner, name, recording)
    return calls


def on_one_and_two_threads(call) -> list:
    """``call()``'s results on one thread and on two."""
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2):
            torch.set_num_threads(count)
            outputs.append(call())
    finally:
        torch.set_num_threads(threads)
    return outputs
