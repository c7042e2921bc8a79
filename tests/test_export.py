"""Export round trip on a small variant: ONNX through onnxruntime, and TorchScript, equal PyTorch."""
import onnx
import pytest
import timm
import torch
from helpers import randomize_inference_state

import patnet  # noqa: F401
from patnet.cli import main
from patnet.export import export_onnx, export_torchscript, script

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), spatial_attn=True, num_classes=10, feature_dim=64)


@pytest.fixture(scope="module")
def small_model():
    return randomize_inference_state(timm.create_model("patnet_t0", **SMALL), seed=2).eval()


def test_onnx_round_trip_dynamic_batch(tmp_path, small_model):
    import onnxruntime as ort
    example = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    report = export_onnx(small_model, tmp_path / "m.onnx", example, dynamic_batch=True)
    assert report.relative_diff <= 1e-4 and "ScatterND" not in report.op_types
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = small_model(batch)
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"input": batch.numpy()})[0]), expected,
                               rtol=1e-4, atol=1e-4)
    assert onnx.load(str(report.path)).opset_import[0].version == 18


def test_torchscript_round_trip(tmp_path, small_model):
    example = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    report = export_torchscript(small_model, tmp_path / "m.pt", example)
    loaded = torch.jit.load(str(report.path))
    other = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), small_model(other), rtol=1e-4, atol=1e-4)


def test_script_survives_a_stale_builtin_entry_on_an_attribute():
    """TorchScript's builtin table is keyed by id(); an entry left by a freed operator can fall on a live
    attribute (here planted on a conv's padding list) and break plain torch.jit.script, not :func:`script`."""
    model = timm.create_model("patnet_t0", **SMALL).eval()
    conv = model.patch_embed.proj
    table = torch.jit._builtins._get_builtin_table()
    table[id(conv._reversed_padding_repeated_twice)] = "aten::add"
    try:
        with pytest.raises(RuntimeError, match="builtin cannot be used as a value"):
            torch.jit.script(model)
        scripted = script(model)
    finally:
        table.pop(id(conv._reversed_padding_repeated_twice), None)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_export_cli_with_checkpoint(tmp_path, small_model, capsys):
    checkpoint = tmp_path / "weights.pth"
    torch.save(small_model.state_dict(), checkpoint)
    output = tmp_path / "out.onnx"
    with pytest.raises(SystemExit):  # architecture keywords missing: a clear error, nothing written
        main(["export", "--model", "patnet_t0", "--checkpoint", str(checkpoint), "--output", str(output)])
    assert "does not fit patnet_t0" in capsys.readouterr().err and not output.exists()
    with pytest.raises(SystemExit):
        main(["export", "--model", "patnet_t0", "--output", str(tmp_path / "m.tflite")])
    assert "--output must end in .onnx" in capsys.readouterr().err


def test_export_cli_writes_checked_openvino_ir(tmp_path, capsys):
    assert main(["export", "--model", "patnet_t0", "--img-size", "96", "96", "--output", str(tmp_path / "t0.xml")]) == 0
    assert "OpenVINO IR" in capsys.readouterr().out
    assert (tmp_path / "t0.xml").stat().st_size > 0 and (tmp_path / "t0.bin").stat().st_size > 1_000_000
