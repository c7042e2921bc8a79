"""The partial mixers' bfloat16 3x3 conv as one C++ call (``torch.ops.patnet.partial_conv3x3``): the numbers of a
float64 conv up to bfloat16's rounding, taken by bfloat16 inference on CPUs with AVX512-BF16 and nowhere else."""
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
    (lambda x, packed: (x, packed[:, :4]), "packed by"),
    (lambda x, packed: (x, packed.float()), "packed by"),
])
def test_partial_conv_rejects_bad_inputs_with_one_line(bf16_dot, change, message):
    x, weight = _conv_inputs(1, 16, 16, (6, 6), seed=5)
    x, packed = change(x, cpu_kernels.pack_for_partial_conv(weight))
    with pytest.raises(RuntimeError, match=message) as raised:
        torch.ops.patnet.partial_conv3x3(x, packed, 16)
    assert "\n" not in str(raised.value).split("\nException raised from")[0].strip()


def _convolved(monkeypatch) -> list:
    return recorded(monkeypatch, fused_layers._PartialMixer, "_kernel_conv")


def _without_kernel(monkeypatch, module):
    """From now on ``module``'s partial convs leave the kernel (its remembered choices forgotten)."""
    monkeypatch.setattr(fused_layers, "_conv_fits_kernel", lambda x, conv: False)
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


def test_deployed_bfloat16_model_takes_the_kernel_for_every_partial_conv(bf16_dot, monkeypatch):
    model = randomize_inference_state(timm.create_model("patnet_t0", num_classes=10, in_chans=1), seed=8).eval()
    deployed = deploy(model).to(BF16)
    x = torch.randn(1, 1, 64, 67, generator=torch.Generator().manual_seed(8)).to(BF16).contiguous(
        memory_format=torch.channels_last)
    mixers = sum(isinstance(module, (PartialChannelAttn, PartialSelfAttn)) for module in model.modules())
    convolved = _convolved(monkeypatch)
    with torch.no_grad():
        actual = deployed(x).float()
        _without_kernel(monkeypatch, deployed)
        expected = deployed(x).float()
    assert len(convolved) == mixers
    assert relative_error(expected, actual) <= 2e-2


def test_partial_conv_kernel_skipped_where_it_does_not_apply(bf16_dot, monkeypatch):
    """float32, autocast, inputs that need gradients, NCHW maps, disabled kernels, TorchScript and traced graphs
    take oneDNN or ATen."""
    mixer = _bf16_mixer("pat_ch", seed=9)
    x = torch.randn(1, 48, 6, 6, generator=torch.Generator().manual_seed(9)).to(BF16)
    last = x.contiguous(memory_format=torch.channels_last)
    convolved = _convolved(monkeypatch)
    mixer(last.clone().requires_grad_(True)).sum().backward()
    with torch.no_grad():
        mixer(x)  # NCHW: the conv's input slice has no unit channel stride
        copy.deepcopy(mixer).float()(last.float())
        with torch.autocast("cpu", dtype=BF16):
            copy.deepcopy(mixer).float()(last.float())
        torch.jit.script(copy.deepcopy(mixer))(last)
        torch.jit.trace(mixer, last, check_trace=False)
        monkeypatch.setattr(cpu_kernels, "ENABLED", False)
        mixer(last)
    assert convolved == []


def test_partial_conv_kernel_only_on_cpus_without_amx(monkeypatch):
    """Where the CPU has AMX (or lacks AVX512-BF16) oneDNN keeps the conv: the kernel was measured only without."""
    mixer = _bf16_mixer("pat_ch", seed=10)
    x = torch.randn(1, 12, 6, 6).to(BF16).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(cpu_kernels, "PARTIAL_CONV_CPU", False)
    assert not fused_layers._conv_fits_kernel(x, mixer.conv)


def test_compiled_mixer_calls_the_kernel(bf16_dot):
    """Inductor traces the op through its fake (a channels-last map) and calls it from the compiled graph."""
    mixer = _bf16_mixer("pat_ch", seed=11)
    x = torch.randn(1, 48, 9, 7, generator=torch.Generator().manual_seed(11)).to(BF16).contiguous(
        memory_format=torch.channels_last)
    compiled = torch.compile(mixer, fullgraph=True)
    with torch.no_grad():
        expected = mixer(x).float()
        compiled(x)
        with torch.profiler.profile() as profile:
            actual = compiled(x).float()
    assert sum(event.name == "patnet::partial_conv3x3" for event in profile.events()) == 1
    assert relative_error(expected, actual) <= 1e-2
