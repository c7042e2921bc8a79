"""The training form's backward: the post-gate BatchNorms get contiguous gradients, and gradients are unchanged."""
import pytest
import torch

from patnet.layers import partial
from patnet.layers.partial import PartialChannelAttn, PartialSpatialAttn, contiguous_grad


def _gradient_layout(monkeypatch, undone: bool, memory_format=torch.contiguous_format) -> bool:
    if undone:
        monkeypatch.setattr(partial, "contiguous_grad", lambda x: x)
    seen = []
    mid = torch.randn(2, 3, 4, 4, requires_grad=True).to(memory_format=memory_format) * 1.0
    mid.register_hook(lambda grad: seen.append(grad.is_contiguous(memory_format=memory_format)))
    zeros = torch.zeros(2, 1, 4, 4).to(memory_format=memory_format)
    out = torch.cat((zeros, partial.contiguous_grad(mid)), dim=1)
    (out * torch.randn(out.shape).to(memory_format=memory_format)).sum().backward()
    return seen[0]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_contiguous_grad_hands_on_a_contiguous_gradient(monkeypatch, memory_format):
    assert _gradient_layout(monkeypatch, undone=False, memory_format=memory_format)
    assert not _gradient_layout(monkeypatch, undone=True, memory_format=memory_format)  # cat hands on a slice


def test_contiguous_grad_is_the_identity_forward_and_backward():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = contiguous_grad(x)
    assert torch.equal(y, x)
    weight = torch.randn_like(x)
    (grad,) = torch.autograd.grad((y * weight).sum(), x)
    assert torch.equal(grad, weight)
    plain = torch.randn(2, 3)
    assert contiguous_grad(plain) is plain  # nothing to do without a gradient


@pytest.mark.parametrize("mixer", [lambda: PartialChannelAttn(16), lambda: PartialSpatialAttn(16)])
def test_mixer_gradients_do_not_depend_on_the_gradient_layout(monkeypatch, mixer):
    torch.manual_seed(0)
    module = mixer().train()
    x = torch.randn(4, 16, 6, 5, requires_grad=True)

    def gradients():
        out = module(x)
        return torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                   [x, *module.parameters()])
    shipped = gradients()
    monkeypatch.setattr(partial, "contiguous_grad", lambda t: t)
    for a, b in zip(shipped, gradients()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # BN backward sums in another order
