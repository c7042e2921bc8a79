"""patnet's C++ CPU kernel for PAT_ch's deploy form: the same numbers as the PyTorch form, taken only where it
applies, and a failed build costs one warning, never a result."""
import copy

import pytest
import timm
import torch
from helpers import on_one_and_two_threads, pat_block_pair, randomize_inference_state, recorded, relative_error

import patnet  # noqa: F401
import patnet.layers.fused as fused_layers
from patnet.deploy import deploy
from patnet.layers import PartialChannelAttn, cpu_kernels


def _mixer(seed: int = 0):
    """A deployed PAT_ch mixer with random inference state."""
    return pat_block_pair("pat_ch", False, seed=seed)[1].spatial_mixing


def _taken(monkeypatch) -> list:
    return recorded(monkeypatch, fused_layers.FusedPartialChannelAttn, "_gated_concat")


def _both_forms(mixer, x, monkeypatch):
    with torch.no_grad():
        kernel = mixer(x)
        monkeypatch.setattr(cpu_kernels, "ENABLED", False)
        pytorch = mixer(x)
        monkeypatch.setattr(cpu_kernels, "ENABLED", True)
    return kernel, pytorch


@pytest.mark.parametrize("size", [(56, 56), (16, 16), (13, 9), (2, 2), (1, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_gated_concat_equals_pytorch_form(kernels, monkeypatch, size, batch):
    mixer = _mixer(seed=size[0])
    x = (torch.randn(batch, 48, *size, generator=torch.Generator().manual_seed(batch)) * 2 + 0.5).contiguous(
        memory_format=torch.channels_last)
    taken = _taken(monkeypatch)
    kernel, pytorch = _both_forms(mixer, x, monkeypatch)
    assert taken == [tuple(x.shape)]
    assert kernel.is_contiguous(memory_format=torch.channels_last) and kernel.shape == x.shape
    assert relative_error(pytorch, kernel) <= 1e-6
    assert torch.equal(kernel[:, :mixer.conv_dim], pytorch[:, :mixer.conv_dim])


def test_gated_concat_in_bfloat16_is_as_close_as_pytorch_form(kernels, monkeypatch):
    mixer = _mixer(seed=1)
    x = (torch.randn(1, 48, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 + 0.5).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        reference = mixer(x)
    kernel, pytorch = _both_forms(copy.deepcopy(mixer).to(torch.bfloat16), x.to(torch.bfloat16), monkeypatch)
    assert kernel.dtype == torch.bfloat16
    assert relative_error(reference, kernel) <= max(2 * relative_error(reference, pytorch), 1e-2)


@pytest.mark.parametrize("name, size, chans", [("patnet_t0", 64, 1), ("patnet_t0", 224, 3), ("patnet_t1", 93, 3)])
def test_deploy_form_with_kernel_equals_training_form(kernels, monkeypatch, name, size, chans):
    model = randomize_inference_state(timm.create_model(name, num_classes=10, in_chans=chans), seed=7).eval()
    x = torch.randn(1, chans, size, size + 3, generator=torch.Generator().manual_seed(size))
    taken = _taken(monkeypatch)
    with torch.no_grad():
        assert relative_error(model(x), deploy(model)(x)) <= 1e-5
    assert len(taken) == sum(isinstance(module, PartialChannelAttn) for module in model.modules())


def test_kernel_skipped_where_it_does_not_apply(kernels, monkeypatch):
    """NCHW maps, autocast's mixed dtypes, inputs that need gradients, TorchScript and disabled kernels take
    PyTorch's form."""
    mixer = _mixer(seed=2)
    x = torch.randn(1, 48, 8, 8, generator=torch.Generator().manual_seed(2))
    taken = _taken(monkeypatch)
    with torch.no_grad():
        mixer(x)  # NCHW
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixer(x.contiguous(memory_format=torch.channels_last))
    mixer(x.contiguous(memory_format=torch.channels_last).requires_grad_(True)).sum().backward()
    mixer.gate.bias.requires_grad_(True)
    mixer(x.contiguous(memory_format=torch.channels_last)).sum().backward()
    assert mixer.gate.bias.grad is not None
    mixer.gate.bias.requires_grad_(False)
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)
    with torch.no_grad():
        mixer(x.contiguous(memory_format=torch.channels_last))
    monkeypatch.setattr(cpu_kernels, "ENABLED", True)
    scripted = torch.jit.script(copy.deepcopy(mixer).float())
    with torch.no_grad():
        scripted(x.contiguous(memory_format=torch.channels_last))
    assert taken == []


def test_disabled_kernels_never_build(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)
    monkeypatch.setattr(cpu_kernels, "_loaded", [])
    assert cpu_kernels.available() is False
    assert cpu_kernels._loaded == []


BUILD_LOG = ("Error building extension 'patnet_cpu_kernels': [1/2] c++ -MMD -O3 -c gated_concat.cpp\n"
             "FAILED: gated_concat.o\n"
             "gated_concat.cpp:7:10: fatal error: ATen/ATen.h: No such file or directory\n"
             "ninja: build stopped: subcommand failed.")


def _mixer_outputs_with_build(monkeypatch, which, log: str = BUILD_LOG):
    """Two calls of a mixer whose first eager call builds the kernels with ``shutil.which`` answering ``which``
    and the build raising ``log``; the warnings they give."""
    class FailingBuild:
        @staticmethod
        def load(**_):
            raise RuntimeError(log)

    monkeypatch.setattr(cpu_kernels, "_loaded", [])
    monkeypatch.setattr(cpu_kernels, "_quiet_import", lambda: FailingBuild)
    monkeypatch.setattr(cpu_kernels.shutil, "which", which)
    mixer = _mixer(seed=3)
    x = torch.randn(1, 48, 8, 8, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last)
    with pytest.warns(RuntimeWarning) as caught, torch.no_grad():
        outputs = mixer(x), mixer(x)
    monkeypatch.setattr(cpu_kernels, "ENABLED", False)
    with torch.no_grad():
        expected = mixer(x)
    return outputs, expected, [str(w.message) for w in caught]


def test_failed_build_warns_once_with_its_cause_and_pytorch_form_runs(monkeypatch):
    (first, second), expected, messages = _mixer_outputs_with_build(monkeypatch, lambda tool: f"/usr/bin/{tool}")
    assert messages == ["patnet: C++ CPU kernels unavailable (gated_concat.cpp:7:10: fatal error: ATen/ATen.h: No "
                        "such file or directory); eager inference runs the PyTorch form. Install a C++ compiler and "
                        "ninja to build them, or set PATNET_CPU_KERNELS=0 to skip."]
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_missing_compiler_is_named_without_a_build(monkeypatch):
    (first, _), expected, messages = _mixer_outputs_with_build(
        monkeypatch, lambda tool: None if tool == "c++" else f"/usr/bin/{tool}", log="the build must not run")
    assert len(messages) == 1 and "(c++ not found on PATH)" in messages[0]
    assert torch.equal(first, expected)


def test_build_error_cause_is_one_short_line():
    assert cpu_kernels._first_cause("x" * 500) == "x" * 197 + "..."
    assert cpu_kernels._first_cause("first\n/bin/sh: 1: c++: not found\nlast") == "/bin/sh: 1: c++: not found"
    assert cpu_kernels._first_cause("") == ""


@pytest.mark.parametrize("change, message", [
    (lambda x, conv: (x.contiguous(), conv), "channels-last"),
    (lambda x, conv: (x, conv[:, :, :4]), "conv must be"),
    (lambda x, conv: (x.double(), conv.double()), "share one dtype"),
])
def test_op_rejects_bad_inputs_with_one_line(kernels, change, message):
    mixer = _mixer(seed=4)
    x = torch.randn(1, 48, 8, 8).contiguous(memory_format=torch.channels_last)
    conv = torch.randn(1, mixer.conv_dim, 8, 8).contiguous(memory_format=torch.channels_last)
    x, conv = change(x, conv)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.patnet.gated_concat(x, conv, mixer.gate.weight, mixer.gate.bias)


def _reference(x, conv, weight, bias):
    """``[conv, x_u * hsig([mean, std](x_u) W + b)]`` in float64 from the op's inputs."""
    x, conv, weight, bias = (t.double() for t in (x, conv, weight, bias))
    channels, passed = x.shape[1], conv.shape[1]
    untouched = x[:, passed:]
    mean, std = untouched.mean(dim=(2, 3)), untouched.std(dim=(2, 3)).nan_to_num(0.0)
    gate = bias + mean @ weight[passed:channels] + std @ weight[channels + passed:]
    return torch.cat((conv, untouched * torch.nn.functional.hardsigmoid(gate)[:, :, None, None]), dim=1)


@pytest.mark.parametrize("channels, passed, size", [(20, 5, (7, 5)), (48, 12, (1, 1)), (37, 9, (3, 64)),
                                                    (64, 16, (28, 28))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_equals_float64_reference_for_any_width(kernels, channels, passed, size, dtype):
    """Widths that are not a multiple of the kernel's 16-channel tiles, single pixels, odd row counts."""
    gen = torch.Generator().manual_seed(channels)
    x = (torch.randn(2, channels, *size, generator=gen) * 3 + 1).to(dtype).contiguous(
        memory_format=torch.channels_last)
    conv = torch.randn(2, passed, *size, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(2 * channels, channels - passed, generator=gen) * 0.3).to(dtype)
    bias = torch.randn(channels - passed, generator=gen).to(dtype)
    out = torch.ops.patnet.gated_concat(x, conv, weight, bias)
    expected = _reference(x, conv, weight, bias)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :passed], conv)
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -8  # bfloat16: its own rounding of the product
    assert relative_error(expected, out) <= tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_input_stays_non_finite_as_in_pytorch_form(kernels, monkeypatch, dtype):
    """A NaN in the map makes that sample's gated channels NaN in both forms (never a finite, wrong number)."""
    mixer = copy.deepcopy(_mixer(seed=6)).to(dtype)
    x = torch.randn(2, 48, 5, 5, generator=torch.Generator().manual_seed(6)).to(dtype)
    x[0, 40, 2, 3] = float("nan")
    kernel, pytorch = _both_forms(mixer, x.contiguous(memory_format=torch.channels_last), monkeypatch)
    assert torch.equal(kernel.isnan(), pytorch.isnan())
    assert kernel[0, mixer.conv_dim:].isnan().all() and not kernel[1].isnan().any()


def test_op_result_does_not_depend_on_the_thread_count(kernels):
    """A map large enough to be shared between threads gives the same bits on one thread and on two."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 64, 96, 80, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = torch.randn(1, 16, 96, 80, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(128, 48, generator=gen) * 0.1, torch.randn(48, generator=gen)
    outputs = on_one_and_two_threads(lambda: torch.ops.patnet.gated_concat(x, conv, weight, bias))
    assert torch.equal(outputs[0], outputs[1])
    assert relative_error(_reference(x, conv, weight, bias), outputs[0]) <= 1e-6


# --- PAT_sf's attention: torch.ops.patnet.small_attention ----------------------------------------------------------

def _sdpa_rows(qkv, bias, heads):
    """``softmax(q k^T + bias) v`` per head by SDPA, as ``(B * L, C)`` rows."""
    tokens, channels = bias.shape[-1], qkv.shape[1] // 3
    q, k, v = qkv.view(-1, tokens, 3, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
    return out.transpose(1, 2).reshape(-1, channels)


def _attention_reference(qkv, bias, heads):
    """The same in float64."""
    return _sdpa_rows(qkv.double(), bias.double(), heads)


def _attention_inputs(batch, tokens, dim, dtype, heads=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(batch * tokens, 3 * heads * dim, generator=gen) * 0.5).to(dtype)
    bias = torch.randn(1, heads, tokens, tokens, generator=gen).to(dtype)
    return qkv, bias


@pytest.mark.parametrize("batch, tokens, dim", [(1, 49, 48), (3, 4, 72), (2, 15, 20), (1, 1, 16), (1, 150, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_attention_equals_float64_reference(kernels, batch, tokens, dim, dtype):
    """Token counts and head widths off the kernel's 4-row and 16-column tiles, one token, several samples; in
    bfloat16 as close as SDPA."""
    qkv, bias = _attention_inputs(batch, tokens, dim, dtype, seed=tokens)
    out = torch.ops.patnet.small_attention(qkv, bias, 4)
    expected = _attention_reference(qkv, bias, 4)
    assert out.dtype == dtype and out.shape == (batch * tokens, 4 * dim) and out.is_contiguous()
    if dtype == torch.float32:
        assert relative_error(expected, out) <= 1e-6
    else:
        assert relative_error(expected, out) <= max(1.5 * relative_error(expected, _sdpa_rows(qkv, bias, 4)), 1e-3)


def test_small_attention_takes_a_float32_bias_with_bfloat16_rows(kernels):
    """Autocast inside a compiled graph hands bfloat16 qkv rows with the model's float32 bias."""
    qkv, bias = _attention_inputs(2, 9, 32, torch.bfloat16, seed=3)
    out = torch.ops.patnet.small_attention(qkv, bias.float(), 4)
    assert out.dtype == torch.bfloat16
    assert relative_error(_attention_reference(qkv, bias.float(), 4), out) <= 1e-2


@pytest.mark.parametrize("change, message", [
    (lambda qkv, bias: (qkv.t().contiguous().t(), bias), "qkv must be contiguous"),
    (lambda qkv, bias: (qkv[:, :-1].contiguous(), bias), "qkv must be contiguous"),
    (lambda qkv, bias: (qkv, bias[:, :, :, :-1].contiguous()), "bias must be a contiguous"),
    (lambda qkv, bias: (qkv[:-1].contiguous(), bias), "whole samples of L tokens"),
    (lambda qkv, bias: (qkv.double(), bias), "float32 or bfloat16"),
])
def test_small_attention_rejects_bad_inputs_with_one_line(kernels, change, message):
    qkv, bias = change(*_attention_inputs(2, 5, 16, torch.float32))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.patnet.small_attention(qkv, bias, 4)


def test_small_attention_keeps_nan_where_sdpa_has_it(kernels):
    """A NaN key makes its sample's head NaN in both (never a finite, wrong number); other samples stay finite."""
    qkv, bias = _attention_inputs(2, 7, 16, torch.float32, seed=5)
    qkv[3, 64 + 5] = float("nan")  # sample 0, token 3, the first head's key
    out = torch.ops.patnet.small_attention(qkv, bias, 4)
    assert torch.equal(out.isnan(), _sdpa_rows(qkv, bias, 4).isnan())
    assert out[:7, :16].isnan().all() and not out[7:].isnan().any()


def test_small_attention_does_not_depend_on_the_thread_count(kernels):
    qkv, bias = _attention_inputs(2, 64, 48, torch.float32, seed=9)
    outputs = on_one_and_two_threads(lambda: torch.ops.patnet.small_attention(qkv, bias, 4))
    assert torch.equal(outputs[0], outputs[1])


def _attended(monkeypatch) -> list:
    return recorded(monkeypatch, fused_layers.FusedPartialSelfAttn, "_small_attention")


@pytest.mark.parametrize("size", [(7, 7), (2, 2), (5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pat_sf_attention_in_kernel_equals_sdpa_form(kernels, monkeypatch, size, dtype):
    mixer = copy.deepcopy(pat_block_pair("pat_sf", False, seed=size[1])[1].spatial_mixing).to(dtype)
    x = torch.randn(2, 48, *size, generator=torch.Generator().manual_seed(size[0])).to(dtype).contiguous(
        memory_format=torch.channels_last)
    attended = _attended(monkeypatch)
    with torch.no_grad():
        kernel = mixer(x)
        monkeypatch.setattr(cpu_kernels, "ENABLED", False)
        sdpa = mixer(x)
    assert attended == [(2 * size[0] * size[1], 3 * mixer.untouched_dim)]
    assert relative_error(sdpa.float(), kernel.float()) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_pat_sf_attention_kernel_skipped_where_it_does_not_apply(kernels, monkeypatch):
    """Inputs that need gradients, autocast, maps over MAX_KERNEL_TOKENS, TorchScript and traced graphs take
    SDPA."""
    mixer = pat_block_pair("pat_sf", False, seed=3)[1].spatial_mixing
    x = torch.randn(1, 48, 5, 5, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last)
    attended = _attended(monkeypatch)
    mixer(x.clone().requires_grad_(True)).sum().backward()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixer(x)
        torch.jit.script(copy.deepcopy(mixer))(x)
        torch.jit.trace(mixer, x, check_trace=False)
        monkeypatch.setattr(fused_layers, "MAX_KERNEL_TOKENS", 24)
        mixer(x)
    assert attended == []
