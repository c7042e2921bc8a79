"""The AVX512-BF16 kernels: the partial mixers' bfloat16 3x3 conv (``torch.ops.patnet.partial_conv3x3``) and the
deploy form's bfloat16 matrix products (``torch.ops.patnet.bf16_linear``) as one C++ call each: the numbers of
float64 up to bfloat16's rounding, taken by bfloat16 inference on CPUs with AVX512-BF16 and nowhere else."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import on_one_and_two_threads, pat_block_pair, randomize_inference_state, recorded, relative_error

import patnet  # noqa: F401
import patnet.layers.fused as fused_layers
from patnet.deploy import deploy
from patnet.layers import cpu_kernels
from patnet.layers.partial import PartialChannelAttn, PartialSelfAttn
from patnet.runtimes.hardware import cpu_flags

BF16 = torch.bfloat16


@pytest.fixture
def bf16_dot(kernels):
    """The kernels, on a CPU whose AVX512-BF16 the conv needs."""
    if not cpu_flags()["avx512_bf16"]:
        pytest.skip("this CPU lacks AVX512-BF16")


def _conv_inputs(batch, channels, out_channels, size, seed=0, extra=0):
    """A bf16 channels-last map whose first ``channels`` channels (of ``channels + extra``) are the input, and a
    bf16 (out, in, 3, 3) weight."""
    generator = torch.Generator().manual_seed(seed)
    whole = torch.randn(batch, channels + extra, *size, generator=generator).to(BF16)
    weight = (torch.randn(out_channels, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)).to(BF16)
    return whole.contiguous(memory_format=torch.channels_last)[:, :channels], weight


def _kernel(x, weight):
    return torch.ops.patnet.partial_conv3x3(x, cpu_kernels.pack_for_partial_conv(weight), weight.shape[0])


def _float64(x, weight):
    return F.conv2d(x.double(), weight.double(), padding=1)


@pytest.mark.parametrize("batch, channels, out_channels, size, extra", [
    (1, 16, 16, (56, 56), 48), (2, 8, 8, (13, 9), 24), (1, 24, 24, (7, 7), 0), (1, 40, 40, (1, 1), 8),
    (3, 136, 136, (5, 6), 0), (1, 16, 40, (2, 17), 0), (1, 2, 3, (4, 3), 6)])
def test_partial_conv_equals_float64_conv_up_to_bfloat16_rounding(bf16_dot, batch, channels, out_channels, size,
                                                                  extra):
    """Channel counts off the kernel's 16-wide vectors and 64-channel passes, maps narrower and wider than its
    pixel blocks, channel slices of wider maps: as close to float64 as ATen's own bf16 conv."""
    x, weight = _conv_inputs(batch, channels, out_channels, size, seed=channels + size[0], extra=extra)
    out = _kernel(x, weight)
    exact = _float64(x, weight)
    assert out.shape == exact.shape and out.dtype == BF16
    assert out.is_contiguous(memory_format=torch.channels_last)
    aten_error = (F.conv2d(x, weight, padding=1).double() - exact).abs().max().item()
    error = (out.double() - exact).abs().max().item()
    assert error <= max(1.5 * aten_error, 2 ** -8 * exact.abs().max().item())


def test_partial_conv_does_not_depend_on_the_thread_count(bf16_dot):
    x, weight = _conv_inputs(2, 32, 32, (14, 14), seed=3)
    outputs = on_one_and_two_threads(lambda: _kernel(x, weight))
    assert torch.equal(outputs[0], outputs[1])


def test_partial_conv_keeps_nan_where_aten_has_it(bf16_dot):
    x, weight = _conv_inputs(1, 16, 16, (9, 9), seed=4)
    x = x.clone()
    x[0, 3, 4, 4] = float("nan")
    assert torch.equal(_kernel(x, weight).isnan(), F.conv2d(x, weight, padding=1).isnan())


@pytest.mark.parametrize("change, message", [
    (lambda x, packed: (x.float(), packed), "bfloat16"),
    (lambda x, packed: (x.contiguous(), packed), "channels innermost"),
    (lambda x, packed: (x[:, :15], packed), "even number of channels"),
    (lambda x, packed: (x, packed[:, :4].contiguous()), "packed by"),
    (lambda x, packed: (x, packed.float()), "packed by"),
])
def test_partial_conv_rejects_bad_inputs_with_one_line(bf16_dot, change, message):
    x, weight = _conv_inputs(1, 16, 16, (6, 6), seed=5)
    x, packed = change(x, cpu_kernels.pack_for_partial_conv(weight))
    with pytest.raises(RuntimeError, match=message) as raised:
        torch.ops.patnet.partial_conv3x3(x, packed, 16)
    assert "\n" not in str(raised.value).split("\nException raised from")[0].strip()


ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu,
               "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def _linear_inputs(rows, depth, width, seed=0, bias_dtype=BF16, extra=0):
    """bf16 rows (a column slice of a wider matrix when ``extra``), a bf16 (depth, width) matrix, a bias and a
    residual."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, depth + extra, generator=generator).to(BF16)[:, :depth]
    matrix = (torch.randn(depth, width, generator=generator) / depth ** 0.5).to(BF16)
    bias = torch.randn(width, generator=generator).to(bias_dtype)
    return x, matrix, bias, torch.randn(rows, width, generator=generator).to(BF16)


def _linear(x, matrix, bias, activation="none", residual=None):
    return torch.ops.patnet.bf16_linear(x, cpu_kernels.pack_pairs(matrix), bias, matrix.shape[1], activation,
                                        residual)


@pytest.mark.parametrize("rows, depth, width, extra", [(1, 16, 16, 0), (49, 384, 1152, 0), (7, 40, 24, 6),
                                                       (100, 64, 136, 0), (3, 2, 3, 0), (50, 1280, 17, 0)])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_bf16_linear_equals_float64_up_to_bfloat16_rounding(bf16_dot, rows, depth, width, extra, activation,
                                                             with_residual):
    """Widths off the 16-wide vectors and 64-column blocks, row counts off the 6- and 8-row blocks, row views of
    wider matrices, every activation, with and without a residual: as close to float64 as ATen in bf16."""
    x, matrix, bias, residual = _linear_inputs(rows, depth, width, seed=rows + width, extra=extra)
    residual = residual if with_residual else None
    act = ACTIVATIONS[activation]
    out = _linear(x, matrix, bias, activation, residual)
    exact = act(torch.addmm(bias.double(), x.double(), matrix.double()))
    aten = act(torch.addmm(bias, x, matrix))
    if residual is not None:
        exact, aten = exact + residual.double(), aten + residual
    assert out.shape == (rows, width) and out.dtype == BF16 and out.is_contiguous()
    error = (out.double() - exact).abs().max().item()
    assert error <= max(1.5 * (aten.double() - exact).abs().max().item(), 2 ** -8 * exact.abs().max().item())


def test_bf16_linear_takes_a_float32_bias(bf16_dot):
    x, matrix, bias, _ = _linear_inputs(9, 32, 40, seed=1, bias_dtype=torch.float32)
    exact = torch.addmm(bias.double(), x.double(), matrix.double())
    assert (_linear(x, matrix, bias).double() - exact).abs().max().item() <= 2 ** -8 * exact.abs().max().item()


@pytest.mark.parametrize("rows, depth, width", [(196, 256, 512), (784, 64, 96)])  # column blocks / row chunks first
def test_bf16_linear_does_not_depend_on_the_thread_count(bf16_dot, rows, depth, width):
    x, matrix, bias, residual = _linear_inputs(rows, depth, width, seed=2)
    outputs = on_one_and_two_threads(lambda: _linear(x, matrix, bias, "gelu", residual))
    assert torch.equal(outputs[0], outputs[1])


def test_bf16_linear_keeps_nan_in_its_row(bf16_dot):
    x, matrix, bias, _ = _linear_inputs(10, 32, 40, seed=3)
    x = x.clone()
    x[4, 7] = float("nan")
    assert torch.equal(_linear(x, matrix, bias, "relu").isnan().any(1), torch.arange(10) == 4)


@pytest.mark.parametrize("change, message", [
    (lambda x, packed, bias, residual: (x.float(), packed, bias, residual, "none"), "bfloat16"),
    (lambda x, packed, bias, residual: (x.t(), packed, bias, residual, "none"), "unit column stride"),
    (lambda x, packed, bias, residual: (x[:, :31], packed, bias, residual, "none"), "K even"),
    (lambda x, packed, bias, residual: (x, packed[:, :8].contiguous(), bias, residual, "none"), "packed by"),
    (lambda x, packed, bias, residual: (x, packed, bias[:5], residual, "none"), "bias must"),
    (lambda x, packed, bias, residual: (x, packed, bias, residual[:3], "none"), "residual must"),
    (lambda x, packed, bias, residual: (x, packed, bias, residual, "silu"), "activation must"),
])
def test_bf16_linear_rejects_bad_inputs_with_one_line(bf16_dot, change, message):
    x, matrix, bias, residual = _linear_inputs(6, 32, 40, seed=4)
    x, packed, bias, residual, activation = change(x, cpu_kernels.pack_pairs(matrix), bias, residual)
    with pytest.raises(RuntimeError, match=message) as raised:
        torch.ops.patnet.bf16_linear(x, packed, bias, 40, activation, residual)
    assert "\n" not in str(raised.value).split("\nException raised from")[0].strip()


def _convolved(monkeypatch) -> list:
    return recorded(monkeypatch, fused_layers._PartialMixer, "_kernel_conv")


def _multiplied(monkeypatch) -> list:
    """The rows' shapes of every ``bf16_linear`` call the deployed blocks make from now on."""
    return recorded(monkeypatch, fused_layers, "_pairs_product")


def _without_kernel(monkeypatch, module):
    """From now on ``module``'s partial convs and products leave the kernels (its remembered choices forgotten)."""
    monkeypatch.setattr(fused_layers, "_conv_fits_kernel", lambda x, conv: False)
    monkeypatch.setattr(fused_layers, "_linear_fits_kernel", lambda rows, matrix, bias: False)
    for part in module.modules():
        if isinstance(part, fused_layers._RemembersChoices):
            part._choices.clear()


def _bf16_mixer(mixer_kind: str, seed: int):
    return copy.deepcopy(pat_block_pair(mixer_kind, False, seed=seed)[1].spatial_mixing).to(BF16)


@pytest.mark.parametrize("mixer_kind", ["pat_ch", "pat_sf"])
@pytest.mark.parametrize("compiling", [False, True])
def test_mixers_take_the_kernel_in_bfloat16(bf16_dot, monkeypatch, mixer_kind, compiling):
    """Eager inference (packed weight kept) and compiled graphs (packed in the graph; emulated here by the
    tracer's flag) run the conv as the C++ call, with the numbers of the mixer without it."""
    mixer = _bf16_mixer(mixer_kind, seed=6)
    x = torch.randn(2, 48, 7, 5, generator=torch.Generator().manual_seed(6)).to(BF16).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        _without_kernel(monkeypatch, mixer)
        expected = mixer(x).float()
        monkeypatch.undo()
        mixer._choices.clear()
        convolved = _convolved(monkeypatch)
        monkeypatch.setattr(fused_layers, "_compiling", lambda: compiling)
        actual = mixer(x).float()
    assert convolved == [(2, 12, 7, 5)]
    assert relative_error(expected, actual) <= 1e-2


@pytest.mark.parametrize("name", ["patnet_t0", "patnet_t1"])
def test_deployed_bfloat16_model_takes_the_kernels_everywhere(bf16_dot, monkeypatch, name):
    """Every partial conv, every MLP (PAT_sp's gated ones included) and every PAT_sf product, with the numbers of
    the model without the kernels."""
    model = randomize_inference_state(timm.create_model(name, num_classes=10, in_chans=1), seed=8).eval()
    deployed = deploy(model).to(BF16)
    x = torch.randn(1, 1, 64, 67, generator=torch.Generator().manual_seed(8)).to(BF16).contiguous(
        memory_format=torch.channels_last)
    mixers = sum(isinstance(module, (PartialChannelAttn, PartialSelfAttn)) for module in model.modules())
    attentions = sum(isinstance(module, PartialSelfAttn) for module in model.modules())
    convolved, multiplied = _convolved(monkeypatch), _multiplied(monkeypatch)
    with torch.no_grad():
        actual = deployed(x).float()
        _without_kernel(monkeypatch, deployed)
        expected = deployed(x).float()
    assert len(convolved) == mixers
    assert len(multiplied) == 2 * mixers + 2 * attentions  # each MLP's two products, each PAT_sf's qkv and proj
    assert relative_error(expected, actual) <= 2e-2


@pytest.mark.parametrize("mixer_kind", ["pat_ch", "pat_sf"])
def test_kernels_skipped_where_they_do_not_apply(bf16_dot, monkeypatch, mixer_kind):
    """float32, autocast, inputs that need gradients, NCHW maps (PAT_ch's: PAT_sf's attention makes rows of
    any map), disabled kernels, TorchScript and traced graphs (exports are traced) take oneDNN or ATen."""
    block = copy.deepcopy(pat_block_pair(mixer_kind, False, seed=9)[1]).to(BF16)
    x = torch.randn(1, 48, 6, 6, generator=torch.Generator().manual_seed(9)).to(BF16)
    last = x.contiguous(memory_format=torch.channels_last)
    convolved, multiplied = _convolved(monkeypatch), _multiplied(monkeypatch)
    block(last.clone().requires_grad_(True)).sum().backward()
    with torch.no_grad():
        if mixer_kind == "pat_ch":
            block(x)  # NCHW: no unit channel stride
        copy.deepcopy(block).float()(last.float())
        with torch.autocast("cpu", dtype=BF16):
            copy.deepcopy(block).float()(last.float())
        torch.jit.script(copy.deepcopy(block))(last)
        torch.jit.trace(block, last, check_trace=False)
        monkeypatch.setattr(cpu_kernels, "ENABLED", False)
        block(last)
    assert convolved == [] and multiplied == []


def test_products_keep_onednn_for_activations_the_kernel_lacks(bf16_dot, monkeypatch):
    x = torch.randn(1, 48, 6, 6).to(BF16).contiguous(memory_format=torch.channels_last)
    multiplied = _multiplied(monkeypatch)

    def fresh_block():
        return copy.deepcopy(pat_block_pair("pat_ch", False, seed=12)[1]).to(BF16)
    with torch.no_grad():
        fresh_block()(x)
        in_kernel = len(multiplied)
        block = fresh_block()
        block.mlp.act = torch.nn.Hardswish()
        block(x)
    assert in_kernel == 2 and len(multiplied) == 2


def test_kernels_only_on_cpus_without_amx(monkeypatch):
    """Where the CPU has AMX (or lacks AVX512-BF16) oneDNN keeps the work: the kernels were measured only without."""
    mixer = _bf16_mixer("pat_ch", seed=10)
    x = torch.randn(1, 12, 6, 6).to(BF16).contiguous(memory_format=torch.channels_last)
    rows = torch.randn(36, 48).to(BF16)
    monkeypatch.setattr(cpu_kernels, "BF16_DOT_CPU", False)
    assert not fused_layers._conv_fits_kernel(x, mixer.conv)
    assert not fused_layers._linear_fits_kernel(rows, torch.randn(48, 96).to(BF16), torch.randn(96).to(BF16))


@pytest.mark.parametrize("mixer_kind, products, gates", [("pat_ch", 2, 1), ("pat_sf", 4, 0)])
def test_compiled_block_calls_the_kernels(bf16_dot, mixer_kind, products, gates):
    """Inductor traces the ops through their fakes and calls them from the compiled graph: the partial conv, the
    MLP's two products, PAT_sf's qkv and proj, and PAT_ch's gate and concatenation."""
    block = copy.deepcopy(pat_block_pair(mixer_kind, False, seed=11)[1]).to(BF16)
    x = torch.randn(1, 48, 9, 7, generator=torch.Generator().manual_seed(11)).to(BF16).contiguous(
        memory_format=torch.channels_last)
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        expected = block(x).float()
        compiled(x)
        with torch.profiler.profile() as profile:
            actual = compiled(x).float()
    names = [event.name for event in profile.events()]
    assert names.count("patnet::partial_conv3x3") == 1 and names.count("patnet::bf16_linear") == products
    assert names.count("patnet::gated_concat") == gates
    assert relative_error(expected, actual) <= 1e-2
