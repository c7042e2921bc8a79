"""Eager inference's oneDNN linears and partial convs: taken exactly where intended, equal to torch.addmm,
F.conv2d and the training form, packed again when the weights change, and never in the way of copies, gradients
or TorchScript."""
import copy

import pytest
import timm
import torch
from helpers import randomize_inference_state
from torch import nn

import patnet  # noqa: F401
import patnet.layers.onednn as onednn
from patnet.deploy import deploy
from patnet.export import script
from patnet.layers.fused import FusedMlp, _PartialMixer
from patnet.layers.onednn import PackedConv, PackedMatrix, post_op, takes_onednn, takes_onednn_conv
from patnet.runtimes.runner import relative_difference

needs_kernel = pytest.mark.skipif(not (onednn.HAS_KERNEL and onednn.HAS_CONV_KERNEL),
                                  reason="this torch build has no oneDNN linear or conv")


@pytest.fixture
def mkl_is_slow(monkeypatch):
    monkeypatch.setattr(onednn, "FP32_TAKES_ONEDNN", True)


@needs_kernel
@pytest.mark.parametrize("dtype, fp32_rule, rows, expected", [
    (torch.float32, True, 2048, True),      # fp32 where MKL is slow, 2048 * 32 * 64 = 2**22 multiply-adds
    (torch.float32, False, 2048, False),    # fp32 where MKL is fast (Intel)
    (torch.bfloat16, False, 2048, True),    # bf16 everywhere
    (torch.float32, True, 512, False),      # under MIN_MACS: oneDNN's per-call cost would dominate
    (torch.float16, True, 2048, False),     # other dtypes keep torch.addmm
])
def test_takes_onednn_by_dtype_cpu_and_size(monkeypatch, dtype, fp32_rule, rows, expected):
    monkeypatch.setattr(onednn, "FP32_TAKES_ONEDNN", fp32_rule)
    assert takes_onednn(torch.zeros(rows, 32, dtype=dtype), torch.zeros(32, 64, dtype=dtype)) is expected


@needs_kernel
def test_takes_onednn_not_with_gradients(mkl_is_slow):
    rows, matrix = torch.zeros(2048, 32, requires_grad=True), torch.zeros(32, 64)
    assert not takes_onednn(rows, matrix)
    with torch.no_grad():
        assert takes_onednn(rows, matrix)


def channel_slice(batch: int, channels: int, size: int, dtype=torch.float32) -> torch.Tensor:
    """The first ``channels`` of a channels-last map twice as wide, as a partial mixer's conv sees them."""
    full = torch.randn(batch, 2 * channels, size, size + 1, generator=torch.Generator().manual_seed(size))
    return full.to(dtype).contiguous(memory_format=torch.channels_last)[:, :channels]


@needs_kernel
@pytest.mark.parametrize("dtype, fp32_rule, size, channels_last, expected", [
    (torch.float32, True, 30, True, True),      # 30 x 31 x 32 x 32 x 9 multiply-adds: over MIN_MACS
    (torch.float32, True, 30, False, False),    # an NCHW map keeps F.conv2d (and its output's layout)
    (torch.float32, False, 30, True, False),    # fp32 where MKL is fast (Intel)
    (torch.float32, True, 8, True, False),      # under MIN_MACS (patnet_t0's convs, and the 64 px model's)
    (torch.bfloat16, False, 30, True, True),    # bf16 everywhere
])
def test_takes_onednn_conv_by_layout_dtype_and_size(monkeypatch, dtype, fp32_rule, size, channels_last, expected):
    monkeypatch.setattr(onednn, "FP32_TAKES_ONEDNN", fp32_rule)
    x = channel_slice(1, 32, size, dtype)
    if not channels_last:
        x = x.contiguous()
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False, dtype=dtype).requires_grad_(False)
    assert takes_onednn_conv(x, conv) is expected
    assert not takes_onednn_conv(x, nn.Conv2d(32, 32, 3, padding="same", dtype=dtype).requires_grad_(False))
    x.requires_grad_(True)
    assert not takes_onednn_conv(x, conv)


@needs_kernel
@pytest.mark.parametrize("stride, padding, bias", [(1, 1, False), (2, 0, True), (1, (2, 0), True)])
def test_packed_conv_equals_conv2d_at_any_shape_and_follows_changed_weights(stride, padding, bias):
    torch.manual_seed(1)
    packed, conv = PackedConv(), nn.Conv2d(16, 16, 3, stride, padding, bias=bias).requires_grad_(False)
    for batch, size in ((1, 14), (2, 5), (1, 3), (3, 9)):  # packed for the first shape, right for every other
        x = channel_slice(batch, 16, size)
        actual = packed.conv(x, conv)
        assert actual.is_contiguous(memory_format=torch.channels_last)
        assert relative_difference(conv(x), actual) <= 1e-6
    conv.weight.mul_(2)  # an in-place write bumps the version: packed again
    torch.testing.assert_close(packed.conv(x, conv), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(inplace=True), nn.SiLU(), None])
@needs_kernel
def test_packed_product_equals_addmm_and_activation(act):
    generator = torch.Generator().manual_seed(0)
    rows, matrix, bias = (torch.randn(*shape, generator=generator) for shape in ((300, 48), (48, 96), (96,)))
    expected = torch.addmm(bias, rows, matrix)
    fused = None if act is None else post_op(act)
    actual = PackedMatrix().product(rows, matrix, bias, fused)
    if act is not None:
        expected = act(expected)
        actual = actual if fused is not None else act(actual)
    assert relative_difference(expected, actual) <= 1e-6
    assert (fused is None) == (act is None or isinstance(act, nn.SiLU))


@needs_kernel
def test_packed_matrix_follows_changed_weights():
    packed, rows = PackedMatrix(), torch.randn(10, 8)
    matrix, bias = torch.randn(8, 4), torch.zeros(4)
    first = packed.product(rows, matrix, bias)
    matrix.mul_(2)  # an in-place write (as load_state_dict does) bumps the version: packed again
    torch.testing.assert_close(packed.product(rows, matrix, bias), 2 * first)
    torch.testing.assert_close(packed.product(rows, torch.eye(8, 4), bias), rows[:, :4])
    matrix.data = torch.ones(8, 4)  # new storage behind the same tensor object
    torch.testing.assert_close(packed.product(rows, matrix, bias), rows.sum(dim=1, keepdim=True).expand(10, 4))
    other_rows = torch.randn(37, 8)  # packed for 10 rows, right for any count (detection sees many sizes)
    expected = other_rows.sum(dim=1, keepdim=True).expand(37, 4)
    torch.testing.assert_close(packed.product(other_rows, matrix, bias), expected)


@needs_kernel
@pytest.mark.parametrize("name, size, blocks", [("patnet_t0", 224, 13), ("patnet_t1", 96, 13), ("patnet_t2", 80, 14)])
def test_deploy_form_through_onednn_equals_training_form(mkl_is_slow, monkeypatch, name, size, blocks):
    monkeypatch.setattr(onednn, "MIN_MACS", 0)  # every product, however small
    model = randomize_inference_state(timm.create_model(name, num_classes=10), seed=6).eval()
    deployed = deploy(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    calls = []
    for owner, method in ((PackedMatrix, "product"), (PackedMatrix, "product_plus"), (PackedConv, "conv")):
        original = getattr(owner, method)
        monkeypatch.setattr(owner, method,
                            lambda self, *args, method=method, original=original: calls.append(method) or original(
                                self, *args))
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
    stage4 = 4 if name == "patnet_t2" else 2
    ungated = sum(isinstance(m, FusedMlp) and not m.spatially_gated for m in deployed.modules())
    assert ungated == (0 if name == "patnet_t1" else blocks)  # patnet_t1 has PAT_sp after every MLP
    assert calls.count("product_plus") == ungated  # the second product adds the block's residual
    assert calls.count("conv") == blocks  # every partial mixer's 3x3 conv
    assert len(calls) == 3 * blocks + 2 * stage4  # two products per MLP, qkv and proj per stage-4 block
    assert relative_difference(expected, actual) <= 1e-5


@needs_kernel
def test_deployed_model_copies_scripts_and_trains_after_packing(mkl_is_slow, monkeypatch):
    monkeypatch.setattr(onednn, "MIN_MACS", 0)
    deployed = deploy(timm.create_model("patnet_t0", num_classes=10).eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = deployed(x)
    assert any(m._expand_packed._packed is not None for m in deployed.modules() if isinstance(m, FusedMlp))
    assert any(m._conv_packed._packed is not None for m in deployed.modules() if isinstance(m, _PartialMixer))
    twin = copy.deepcopy(deployed)  # packed tensors have no storage: copies start empty and pack again
    scripted = script(deployed)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), expected)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    deployed(x).sum().backward()  # with gradients the products stay in torch.addmm
    assert x.grad is not None and torch.isfinite(x.grad).all()


@needs_kernel
def test_weights_made_in_inference_mode_keep_addmm(mkl_is_slow, monkeypatch):
    monkeypatch.setattr(onednn, "MIN_MACS", 0)
    model = timm.create_model("patnet_t0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():  # inference tensors have no version counter: a packed copy could go stale
        deployed = deploy(model)
        rows = torch.zeros(4, 8)
        assert not takes_onednn(rows, torch.zeros(8, 16))
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    assert all(m._expand_packed._packed is None for m in deployed.modules() if isinstance(m, FusedMlp))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_deploy_form_has_no_graph_break(mkl_is_slow, monkeypatch, dtype):
    monkeypatch.setattr(onednn, "MIN_MACS", 0)  # the eager rule would take oneDNN for every product
    deployed = deploy(timm.create_model("patnet_t0", num_classes=10).eval()).to(dtype)
    x = torch.randn(1, 3, 64, 64, dtype=dtype)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(deployed)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@needs_kernel
def test_autocast_and_mixed_dtypes_keep_addmm(mkl_is_slow, monkeypatch):
    monkeypatch.setattr(onednn, "MIN_MACS", 0)
    assert not takes_onednn(torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(8, 16))
    deployed = deploy(timm.create_model("patnet_t0", num_classes=10).eval())  # fp32 weights
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = deployed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations meet fp32 weights: addmm casts them
            actual = deployed(x)
    assert actual.dtype == torch.bfloat16
    assert relative_difference(expected, actual) <= 5e-2
