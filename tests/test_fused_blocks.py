"""Every fused (deployment-form) block equals its training form in eval mode, in each of its formulations,
with random BN statistics, at the map sizes of a 224 and a 64 input and at non-square sizes."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import pat_block_pair, randomize_inference_state, relative_error

import patnet  # noqa: F401
import patnet.layers.fused as fused_layers
from patnet.deploy import deploy
from patnet.layers.fused import FusedMlp, FusedPartialSelfAttn
from patnet.layers.stats import compiled_mean_std, mean_biased_std, spatial_mean_std, stacked_mean_std

MAPS = {  # mixer -> map sizes: the stage's map at a 224 input, at a 64 input, non-square
    "pconv": [(56, 56), (16, 16), (13, 9)],
    "pat_ch": [(56, 56), (16, 16), (13, 9)],
    "pat_sf": [(7, 7), (2, 2), (5, 3)],
}
CASES = [(mixer, spatial, size) for mixer in MAPS for spatial in (False, True) for size in MAPS[mixer]]


@pytest.mark.parametrize("mixer, spatial_attn, size", CASES)
def test_fused_block_equals_training_form(mixer, spatial_attn, size):
    block, fused = pat_block_pair(mixer, spatial_attn)
    x = torch.randn(2, 48, *size, generator=torch.Generator().manual_seed(size[0])) * 2 + 0.5
    with torch.no_grad():
        expected = block(x)
        assert relative_error(expected, fused(x)) <= 1e-5
        assert relative_error(expected, fused(x.contiguous(memory_format=torch.channels_last))) <= 1e-5


@pytest.mark.parametrize("size", MAPS["pat_ch"])
@pytest.mark.parametrize("graph", ["export", "compile"])
def test_channel_attention_graph_forms_equal_training_form(monkeypatch, size, graph):
    """The exported graph gates the whole map before the split, compiled graphs take one-pass statistics:
    each block equals the training form (run eagerly here, as the tracer would see it; the fused mixer alone
    lacks the post-gate BN, which the MLP holds)."""
    block, fused = pat_block_pair("pat_ch", False, seed=2)
    x = torch.randn(1, 48, *size, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    monkeypatch.setattr(fused_layers, "_exporting" if graph == "export" else "_compiling", lambda: True)
    with torch.no_grad():
        assert relative_error(block(x), fused(x)) <= 1e-5


@pytest.mark.parametrize("size", MAPS["pat_sf"])
def test_self_attention_export_form_equals_token_form(size):
    _, fused = pat_block_pair("pat_sf", False, seed=1)
    attention = fused.spatial_mixing
    assert isinstance(attention, FusedPartialSelfAttn)
    untouched = torch.randn(3, attention.untouched_dim, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        tokens = attention._attend_tokens(untouched)
        assert relative_error(tokens, attention._attend_channels_first(untouched)) <= 1e-5


def test_channel_gate_passes_convolved_channels_exactly():
    _, fused = pat_block_pair("pat_ch", False, seed=2)
    gate = fused.spatial_mixing.gate
    x = torch.randn(2, 48, 9, 11) * 100
    scale = gate(x)
    assert scale.shape == (2, 48, 1, 1)
    assert torch.equal(scale[:, :fused.spatial_mixing.conv_dim], torch.ones_like(scale[:, :12]))


def test_channel_gate_compiled_form_equals_matrix_product():
    """The compiled form's multiply-and-sum over the gated channels' statistics equals the exported form's
    whole matrix product on those channels; the whole product keeps the passed channels' scale exactly 1."""
    _, fused = pat_block_pair("pat_ch", False, seed=3)
    gate = fused.spatial_mixing.gate
    channels, passed = 48, gate.passed
    stats = torch.randn(2, 2 * channels, generator=torch.Generator().manual_seed(3)) * 10
    untouched_stats = torch.cat((stats[:, passed:channels], stats[:, channels + passed:]), dim=1)
    with torch.no_grad():
        weight, bias = gate.whole()
        product = torch.addmm(bias, stats, weight)
        summed = gate._products_summed(untouched_stats)
    assert passed == 12 and summed.shape == (2, channels - passed)
    assert relative_error(product[:, passed:], summed) <= 1e-5
    assert torch.equal(F.hardsigmoid(product[:, :passed]), torch.ones(2, passed))  # passed channels stay exact


def test_channel_gate_compiled_form_sums_bf16_weights_in_fp32():
    """A bf16 gate's multiply-and-sum promotes its bf16 weights inside the product: fp32 sums of the bf16 values."""
    _, fused = pat_block_pair("pat_ch", False, seed=4)
    gate = fused.spatial_mixing.gate.to(torch.bfloat16)
    channels, passed = 48, gate.passed
    stats = torch.randn(2, 2 * (channels - passed), generator=torch.Generator().manual_seed(4))
    weight = torch.cat((gate.weight[passed:channels], gate.weight[channels + passed:])).float()
    with torch.no_grad():
        summed = gate._products_summed(stats)
    assert summed.dtype == torch.float32
    assert relative_error(torch.addmm(gate.bias.float(), stats, weight), summed) <= 1e-5


@pytest.mark.parametrize("size", [(9, 11), (2, 2), (1, 1)])
@pytest.mark.parametrize("graph", ["eager", "compile"])
def test_channel_gate_untouched_scale_is_the_whole_scale_on_gated_channels(graph, size, monkeypatch):
    """The exported form (biased std, ``sqrt(n / (n - 1))`` in the weight) equals PyTorch's, single values too."""
    _, fused = pat_block_pair("pat_ch", False, seed=5)
    gate = fused.spatial_mixing.gate
    x = torch.randn(1, 48, *size, generator=torch.Generator().manual_seed(5)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        whole = gate(x)
        if graph == "compile":
            monkeypatch.setattr(fused_layers, "_compiling", lambda: True)
        part = gate.untouched_scale(x)
    assert part.shape == (1, 48 - gate.passed, 1, 1)
    assert relative_error(whole[:, gate.passed:], part) <= 1e-5


def test_spatial_gate_compiled_form_equals_conv():
    _, fused = pat_block_pair("pat_ch", True, seed=4)
    gate = fused.mlp.spatial_gate
    x = torch.randn(2, 48, 9, 11, generator=torch.Generator().manual_seed(4)) * 10
    with torch.no_grad():
        convolved = F.conv2d(x, gate.gate_weight)
        summed = gate._products_summed(x)
    assert summed.shape == convolved.shape == (2, 1, 9, 11)
    assert relative_error(convolved, summed) <= 1e-5


@pytest.mark.parametrize("summed", [False, True])
@pytest.mark.parametrize("size", [(1, 1), (1, 5), (8, 8)])
def test_spatial_statistics_match_torch(size, summed):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    mean, std = spatial_mean_std(x, summed=summed)
    assert mean.shape == std.shape == (2, 5, 1, 1)
    torch.testing.assert_close(mean.flatten(), x.mean(dim=(2, 3)).flatten())
    if size[0] * size[1] > 1:
        torch.testing.assert_close(std.flatten(), x.std(dim=(2, 3)).flatten())


@pytest.mark.parametrize("size", [(56, 56), (7, 7), (2, 2), (1, 1), (13, 9)])
@pytest.mark.parametrize("batch, channels_last", [(1, True), (1, False), (3, True)])
def test_stacked_statistics_equal_spatial_statistics(size, batch, channels_last):
    x = torch.randn(batch, 30, *size, generator=torch.Generator().manual_seed(size[1])) * 0.01 + 50
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, std = spatial_mean_std(x)
    expected = torch.cat((mean.flatten(1), std.flatten(1)), dim=1)
    stacked = stacked_mean_std(x)
    assert stacked.shape == (batch, 60)
    torch.testing.assert_close(stacked, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_mean_std(x), expected, rtol=1e-5, atol=1e-6)
    biased = mean_biased_std(x)
    count = size[0] * size[1]
    torch.testing.assert_close(biased[:, 30:] * math.sqrt(count / max(count - 1, 1)), expected[:, 30:],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(biased[:, :30], expected[:, :30], rtol=1e-5, atol=1e-6)


def test_summed_statistics_have_the_mean_forms_values_and_gradients():
    x = torch.randn(4, 6, 5, 3, requires_grad=True)
    weights = torch.randn(2, 4, 6, 1, 1)
    results = []
    for summed in (False, True):
        mean, std = spatial_mean_std(x, summed=summed)
        (grad,) = torch.autograd.grad((mean * weights[0] + std * weights[1]).sum(), x)
        results.append((mean, std, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_stacked_statistics_keep_dtype_and_gradients():
    x = torch.randn(1, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    assert stacked_mean_std(x.bfloat16()).dtype == torch.bfloat16
    x.requires_grad_(True)
    stacked_mean_std(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["patnet_t0", "patnet_t1"])
def test_deploy_form_equals_training_form_at_224(name):
    model = randomize_inference_state(timm.create_model(name, num_classes=10), seed=5).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(224))
    with torch.no_grad():
        assert relative_error(model(x), deploy(model)(x)) <= 1e-5


@pytest.mark.parametrize("spatial_attn", [False, True])
@pytest.mark.parametrize("residual_layout", [None, "channels_last", "nchw"])
def test_mlp_rows_columns_and_convs_agree(spatial_attn, residual_layout):
    _, fused = pat_block_pair("pat_ch", spatial_attn, seed=4)
    mlp = fused.mlp
    x = torch.randn(2, 48, 11, 7).contiguous(memory_format=torch.channels_last)
    residual = None if residual_layout is None else 3 * torch.randn(2, 48, 11, 7)
    if residual_layout == "channels_last":
        residual = residual.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = mlp.spatial_gate(mlp._as_convs(x, None))
        expected = expected if residual is None else residual + expected
        assert relative_error(expected, mlp(x, residual)) <= 1e-5
        if not mlp.spatially_gated:
            assert relative_error(expected, mlp._on_rows(x, residual)) <= 1e-5
            assert relative_error(expected, mlp._on_columns(x.contiguous(), residual)) <= 1e-5
            assert relative_error(expected, mlp._as_convs(x, residual)) <= 1e-5


@pytest.mark.parametrize("small_activation", [0, 10**9])
def test_mlp_activation_on_map_view_equals_activation_on_rows(monkeypatch, small_activation):
    monkeypatch.setattr(FusedMlp, "small_activation", small_activation)
    _, fused = pat_block_pair("pat_ch", False, seed=5)
    hidden = torch.randn(2 * 5 * 3, 96)
    activated = fused.mlp._activated(hidden, 2, 5, 3)
    assert activated.shape == hidden.shape and activated.is_contiguous()
    assert relative_error(F.gelu(hidden), activated) <= 1e-6


@pytest.mark.parametrize("dtype, min_macs, convs", [(torch.float32, 0, True), (torch.float32, 10**9, False),
                                                     (torch.bfloat16, 0, False)])
def test_compiled_fp32_takes_conv_forms_where_mkl_is_slow(monkeypatch, dtype, min_macs, convs):
    _, fused = pat_block_pair("pat_sf", True, seed=5)
    fused = fused.to(dtype)
    x = torch.randn(1, 48, 7, 5, generator=torch.Generator().manual_seed(5)).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    taken = []
    for name in ("_as_convs", "_on_rows"):
        monkeypatch.setattr(FusedMlp, name, _recording(getattr(FusedMlp, name), taken, name))
    for name in ("_attend_channels_first", "_attend_tokens"):
        attend = getattr(FusedPartialSelfAttn, name)
        monkeypatch.setattr(FusedPartialSelfAttn, name, _recording(attend, taken, name))
    with torch.no_grad():
        expected = fused(x).float()
        taken.clear()
        monkeypatch.setattr(fused_layers, "FP32_TAKES_ONEDNN", True)
        monkeypatch.setattr(fused_layers, "MIN_MACS", min_macs)
        monkeypatch.setattr(fused_layers, "_compiling", lambda: True)
        monkeypatch.setattr(fused_layers, "_linear_fits_kernel", lambda *_: False)  # rows, not the bf16 C++ call
        actual = fused(x).float()
    assert taken == (["_attend_channels_first", "_as_convs"] if convs else ["_attend_tokens", "_on_rows"])
    assert relative_error(expected, actual) <= (1e-5 if dtype == torch.float32 else 2e-2)


class _MapOnCuda:
    """What ``_convs_on_cuda`` reads of a map, for a machine without a GPU."""

    def __init__(self, dtype: torch.dtype):
        self.is_cuda, self.dtype = True, dtype


@pytest.mark.parametrize("dtype, autocast, rule, convs", [(torch.float32, False, True, True),
                                                          (torch.bfloat16, False, True, False),
                                                          (torch.float32, True, True, False),
                                                          (torch.float32, False, False, False)])
def test_cuda_fp32_products_run_as_convs(monkeypatch, dtype, autocast, rule, convs):
    monkeypatch.setattr(fused_layers, "CUDA_PRODUCTS_AS_CONVS", rule)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: autocast)
    assert fused_layers._convs_on_cuda(_MapOnCuda(dtype)) is convs
    assert fused_layers._convs_on_cuda(torch.zeros(1, dtype=dtype)) is False


def _recording(method, taken: list, name: str):
    def wrapper(self, *args):
        taken.append(name)
        return method(self, *args)
    return wrapper


def _counting(monkeypatch, name: str) -> list:
    """Record the input shape of every call of ``patnet.layers.fused``'s rule ``name``."""
    asked, rule = [], getattr(fused_layers, name)

    def counted(x, *args):
        asked.append(tuple(x.shape))
        return rule(x, *args)
    monkeypatch.setattr(fused_layers, name, counted)
    return asked


def test_eager_inference_asks_path_rules_once_per_input_kind(monkeypatch):
    """The deployed blocks remember their rules' answers per input shape, strides, dtype and device in eager
    inference; with gradients on they ask every call; ``.to()`` and state-dict loads make them ask again."""
    _, fused = pat_block_pair("pat_ch", False, seed=3)
    conv_asked, product_asked = _counting(monkeypatch, "takes_onednn_conv"), _counting(monkeypatch, "takes_onednn")
    x = torch.randn(1, 48, 14, 14, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        outputs = [fused(x), fused(x), fused(x[:, :, :7, :7].contiguous(memory_format=torch.channels_last)), fused(x)]
    assert conv_asked == [(1, 12, 14, 14), (1, 12, 7, 7)] and product_asked == [(196, 48), (49, 48)]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[3])
    fused(x), fused(x)
    assert len(conv_asked) == 4 and len(product_asked) == 4
    changes = (lambda: fused.to(memory_format=torch.channels_last), lambda: fused.load_state_dict(fused.state_dict()))
    for change in changes:
        change()
        with torch.no_grad():
            fused(x)
        assert len(conv_asked) == len(product_asked)
    assert len(conv_asked) == 6
