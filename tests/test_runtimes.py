"""Every runtime path on small models, against eager; the bf16, missing-package and wrong-output errors."""
import re
import sys

import numpy as np
import pytest
import timm
import torch
from helpers import randomize_inference_state
from torch import nn

import patnet  # noqa: F401
from patnet.cli import main
from patnet.deploy import deploy
from patnet.runtimes import (
    FLAGS_THAT_MATTER,
    HALF_RTOL,
    INSTALL_HINT,
    OutputMismatchError,
    check_native_bf16,
    describe_cpu,
    export_openvino,
    external,
    hardware,
    input_channels,
    make_runner,
    native_bf16,
    onnxruntime_options,
    relative_difference,
    unsupported_reason,
)

PATNET = dict(embed_dim=16, depths=(1, 1, 2, 1), spatial_attn=True, num_classes=10, feature_dim=64)
FASTERNET = dict(embed_dim=16, depths=(1, 1, 1, 1), num_classes=10)
NATIVE_BF16 = pytest.mark.skipif(not native_bf16("cpu"), reason=f"this CPU ({describe_cpu()}) has no native bf16")
NO_NATIVE_BF16 = pytest.mark.skipif(native_bf16("cpu"), reason="checks the message on a CPU without native bf16")


def small(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    config = {**(PATNET if name.startswith("patnet") else FASTERNET), **kwargs}
    return randomize_inference_state(timm.create_model(name, **config), seed=seed).eval()


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def error_lines(stderr: str) -> list[str]:
    """The command's error lines (a load warning may come before them); no traceback."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("patnet bench: error:")]


@torch.no_grad()
def eager_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return deploy(model)(x)


# --- fp32: every runtime matches eager --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime", "openvino"])
@pytest.mark.parametrize("name, shape", [("patnet_t0", (2, 3, 96, 96)), ("fasternet_t0", (2, 3, 96, 96)),
                                         ("fasternet_t0", (2, 1, 64, 64))])
def test_fp32_runtimes_match_eager(one_thread, runtime, name, shape):
    model = small(name, in_chans=shape[1])
    x = batch(*shape)
    runner = make_runner(model, runtime, "fp32", x)
    output = runner(batch(*shape, seed=1))
    assert output.dtype == torch.float32 and output.shape == (shape[0], 10)
    assert relative_difference(eager_reference(model, batch(*shape, seed=1)), output) <= 1e-4
    assert runner.build_s > 0 and runner.first_call_s > 0 and runner.startup_s == runner.build_s + runner.first_call_s
    assert runner.relative_diff is None if runtime == "eager" else runner.relative_diff <= 1e-4


def test_compile_freezes_each_model_separately(one_thread):
    """Two instances of one architecture with different weights: each compiled runner computes its own."""
    x = batch(1, 3, 32, 32)
    models = [small("patnet_t0", seed=seed, depths=(1, 1), spatial_attn=False) for seed in (0, 1)]  # PAT_ch, PAT_sf
    runners = [make_runner(model, "compile", "fp32", x) for model in models]
    for model, runner in zip(models, runners):
        assert relative_difference(eager_reference(model, x), runner(x)) <= 1e-4
    assert relative_difference(runners[0](x), runners[1](x)) > 1e-2


def test_runner_keeps_the_thread_count_and_the_training_form():
    before = torch.get_num_threads()
    model = small("fasternet_t0").train()
    runner = make_runner(model, "eager", "fp32", batch(1, 3, 32, 32), threads=1, form="train")
    runner(batch(1, 3, 32, 32))
    assert torch.get_num_threads() == before and model.training


# --- bf16: where native, close to fp32 with the same top-1; elsewhere a clear message ---------------------------


@NATIVE_BF16
@pytest.mark.parametrize("runtime", ["eager", "openvino", "compile"])
def test_bf16_runtimes_match_fp32_where_native(one_thread, runtime):
    """Within HALF_RTOL of the output's scale, and the same top-1 wherever fp32's top-2 margin exceeds twice it."""
    model, x = small("patnet_t0"), batch(16, 3, 64, 64)
    output, reference = make_runner(model, runtime, "bf16", x)(x), eager_reference(model, x)
    scale = reference.abs().max()
    assert relative_difference(reference, output) <= HALF_RTOL
    top2 = reference.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 2 * HALF_RTOL * scale
    assert confident.any()
    assert torch.equal(output.argmax(1)[confident], reference.argmax(1)[confident])


@NO_NATIVE_BF16
def test_bf16_without_native_support_names_what_the_cpu_lacks():
    with pytest.raises(ValueError, match="has no native bf16: it lacks .*avx512_bf16.*; use fp32 here"):
        make_runner(small("fasternet_t0"), "eager", "bf16", batch(1, 3, 32, 32))


def test_bf16_message_names_the_missing_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: dict.fromkeys(FLAGS_THAT_MATTER, False) | {"avx2": True})
    with pytest.raises(ValueError, match="lacks avx512_bf16 and amx_bf16; use fp32 here .--dtype fp32."):
        check_native_bf16("cpu")
    assert describe_cpu().endswith("(avx2; no avx512f, avx512_bf16, amx_bf16)")


def test_cpu_model_names_family_and_model_where_cpuinfo_has_them(monkeypatch):
    fields = {"model name": "AMD EPYC", "cpu family": "26", "model\t": "2"}
    monkeypatch.setattr(hardware, "_cpuinfo_field", fields.get)
    assert hardware.cpu_model() == "AMD EPYC, family 26 model 2"
    monkeypatch.setattr(hardware, "_cpuinfo_field", {"model name": "AMD EPYC"}.get)
    assert hardware.cpu_model() == "AMD EPYC"


@pytest.mark.parametrize("vendor, slow", [("AuthenticAMD", True), ("GenuineIntel", False), (None, False)])
def test_mkl_gemm_is_slow_on_amd_only(monkeypatch, vendor, slow):
    monkeypatch.setattr(hardware, "_cpuinfo_field", lambda field: vendor if field == "vendor_id" else None)
    assert hardware.mkl_gemm_is_slow() is slow


def test_bench_bf16_without_native_support_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: dict.fromkeys(FLAGS_THAT_MATTER, False))
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "fasternet_t0", "--dtype", "bf16", "--quick", "--out-dir", str(tmp_path), "--no-progress"])
    (error,) = error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and "no native bf16" in error


# --- what a runtime cannot do, and missing packages ---------------------------------------------------------------


@pytest.mark.parametrize("runtime, dtype, kwargs, message", [
    ("onnxruntime", "bf16", {}, "no bf16 kernels"),
    ("eager", "fp16", {}, "fp16 runs on a CUDA GPU only"),
    ("openvino", "fp32", dict(form="train"), "runs the deploy form only"),
    ("tensorrt", "fp32", {}, "unknown runtime 'tensorrt'"),
    ("eager", "fp32", dict(threads=10_000), "thread count must be between 1 and"),
])
def test_impossible_requests_are_clear_errors(runtime, dtype, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_runner(small("fasternet_t0"), runtime, dtype, batch(1, 3, 32, 32), **kwargs)


def test_runner_rejects_other_shapes_and_integer_input():
    runner = make_runner(small("fasternet_t0"), "eager", "fp32", batch(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"built for inputs of shape \(1, 3, 32, 32\), got \(2, 3, 32, 32\)"):
        runner(batch(2, 3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        runner(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_onnx_runtimes_run_on_the_cpu_only():
    assert "CPU only" in unsupported_reason("openvino", "fp32", "cuda")
    assert unsupported_reason("compile", "bf16", "cuda") is None


@pytest.mark.parametrize("package, runtime", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_package_gives_the_install_hint(monkeypatch, package, runtime):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    with pytest.raises(ValueError, match=f"needs the {package} package.*{re.escape(INSTALL_HINT)}"):
        make_runner(small("fasternet_t0"), runtime, "fp32", batch(1, 3, 32, 32))


def test_missing_openvino_in_the_bench_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(SystemExit):
        main(["bench", "fasternet_t0", "--runtime", "openvino", "--quick", "--img-size", "32", "--no-throughput",
              "--model-kwargs", '{"embed_dim": 16, "depths": [1, 1, 1, 1]}', "--matmul-size", "64",
              "--out-dir", str(tmp_path), "--no-progress"])
    (error,) = error_lines(capsys.readouterr().err)
    assert INSTALL_HINT in error


def test_a_runtime_that_computes_wrongly_is_caught(monkeypatch):
    build = external.build_onnxruntime

    def off_by_one_percent(*args):
        forward, prepare = build(*args)
        return (lambda x: forward(x) * 1.01), prepare

    monkeypatch.setattr(external, "build_onnxruntime", off_by_one_percent)
    message = r"onnxruntime fp32 output differs from eager fp32 by \S+ of its scale \(allowed 1e-04\)"
    with pytest.raises(OutputMismatchError, match=message):
        make_runner(small("fasternet_t0"), "onnxruntime", "fp32", batch(1, 3, 32, 32))


@pytest.mark.parametrize("threads, intra", [(1, 1), (2, 2), (None, 0)])
def test_onnxruntime_sessions_stop_spinning_between_runs(threads, intra):
    """An idle session's workers must not spin on the cores another session (the alternated partner) runs on."""
    options = onnxruntime_options(threads)
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (intra, 1)


def test_input_channels():
    assert input_channels(small("fasternet_t0", in_chans=1)) == 1
    assert input_channels(nn.Sequential(nn.Conv2d(5, 2, 1))) == 5
    assert input_channels(nn.Linear(2, 2)) == 3


# --- OpenVINO IR export --------------------------------------------------------------------------------------------


def test_export_openvino_writes_a_checked_ir(tmp_path, one_thread):
    import openvino as ov

    model, x = small("patnet_t0"), batch(1, 3, 96, 96)
    report = export_openvino(model, tmp_path / "model.xml", x)
    assert report.fmt == "openvino" and report.relative_diff <= 1e-4 and "Convolution" in report.op_types
    assert "HardSigmoid" not in report.op_types and "Clamp" in report.op_types  # the gates, as OpenVINO fuses them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    compiled = ov.Core().compile_model(str(tmp_path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    other = batch(1, 3, 96, 96, seed=1)
    output = torch.from_numpy(np.asarray(compiled(other.numpy())[0]))
    assert relative_difference(eager_reference(model, other), output) <= 1e-4


def test_hardsigmoids_become_the_same_clamps_with_the_nodes_alpha_and_beta(tmp_path):
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper

    from patnet.runtimes.ov_passes import hardsigmoids_as_clamps

    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    core = ov.Core()
    model = hardsigmoids_as_clamps(core.read_model(str(tmp_path / "g.onnx")))
    assert "HardSigmoid" not in {op.get_type_name() for op in model.get_ordered_ops()}
    x = np.linspace(-6.0, 6.0, 10, dtype=np.float32).reshape(2, 5)
    output = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    np.testing.assert_allclose(output, np.clip(0.3 * x + 0.4, 0.0, 1.0), rtol=1e-6, atol=1e-7)


def test_channel_layernorms_become_one_mvn_over_channels_with_the_same_values(tmp_path):
    """The export's LayerNorm over channels (Transpose, LayerNormalization, Transpose) reads as one MVN over axis 1
    with the node's epsilon and affine; a LayerNorm over another axis stays as it is."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from patnet.runtimes.ov_passes import layernorms_channels_first

    rng = np.random.default_rng(0)
    scale, shift = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "scale", "shift"], ["n"], axis=-1, epsilon=0.01),
             helper.make_node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2]),
             helper.make_node("LayerNormalization", ["x", "width_scale", "width_shift"], ["z"], axis=-1)]
    initializers = [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift"),
                    numpy_helper.from_array(np.ones(3, np.float32), "width_scale"),
                    numpy_helper.from_array(np.zeros(3, np.float32), "width_shift")]
    shape = [2, 5, 4, 3]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "yz"],
                              initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
    core = ov.Core()
    model = layernorms_channels_first(core.read_model(str(tmp_path / "g.onnx")))
    assert [op.get_type_name() for op in model.get_ordered_ops()].count("Transpose") == 0
    x = rng.normal(size=shape).astype(np.float32) * 3 + 1
    y, z = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x).values()
    centred = x - x.mean(axis=1, keepdims=True)
    expected = centred / np.sqrt((centred ** 2).mean(axis=1, keepdims=True) + 0.01)
    np.testing.assert_allclose(y, expected * scale[:, None, None] + shift[:, None, None], rtol=1e-5, atol=1e-5)
    width_centred = x - x.mean(axis=3, keepdims=True)
    np.testing.assert_allclose(z, width_centred / np.sqrt((width_centred ** 2).mean(axis=3, keepdims=True) + 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_export_openvino_from_a_given_onnx_file(tmp_path):
    from patnet.export import export_onnx

    model, x = small("fasternet_t0"), batch(1, 3, 64, 64)
    onnx_path = export_onnx(model, tmp_path / "model.onnx", x).path
    report = export_openvino(model, tmp_path / "ir" / "model.xml", x, onnx_path=onnx_path)
    assert report.relative_diff <= 1e-4 and (tmp_path / "ir" / "model.bin").is_file()


def test_export_openvino_writes_nothing_when_the_check_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(external, "relative_difference", lambda reference, other: 1.0)
    with pytest.raises(RuntimeError, match="the IR was not written"):
        export_openvino(small("fasternet_t0"), tmp_path / "model.xml", batch(1, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_export_openvino_path_and_package_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="must end in .xml"):
        export_openvino(small("fasternet_t0"), tmp_path / "model.onnx", batch(1, 3, 32, 32))
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ValueError, match=re.escape(INSTALL_HINT)):
        export_openvino(small("fasternet_t0"), tmp_path / "model.xml", batch(1, 3, 32, 32))
