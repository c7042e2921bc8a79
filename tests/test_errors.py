"""Bad input gets a clear ValueError/TypeError that names the problem and the fix."""
import pytest
import timm
import torch
from helpers import fixed_input

import patnet


@pytest.fixture(scope="module")
def model():
    return timm.create_model("patnet_t0", num_classes=10, in_chans=1).eval()


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"expected 1 input channels, got 3; create the model with in_chans=3"):
        model(fixed_input(1, 3, 64, 64))


def test_not_4d(model):
    with pytest.raises(ValueError, match=r"4-D .* got shape \[1, 64, 64\]; add a batch dimension"):
        model(fixed_input(1, 64, 64))


def test_integer_dtype(model):
    with pytest.raises(TypeError, match=r"floating-point .* torch.uint8"):
        model(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_too_small(model):
    with pytest.raises(ValueError, match=r"28x28 is too small: this network needs at least 32x32"):
        model(fixed_input(1, 1, 28, 28))


def test_forward_intermediates_checks_input_too(model):
    with pytest.raises(ValueError, match="input channels"):
        model.forward_intermediates(fixed_input(1, 3, 64, 64))


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown model 'patnet_t3'.*patnet_t2"):
        patnet.create_model("patnet_t3")
    with pytest.raises(RuntimeError, match="Unknown model"):  # timm's own message, for timm.create_model
        timm.create_model("patnet_t3")


def test_n_div_leaving_no_channel():
    with pytest.raises(ValueError, match=r"n_div=64 leaves no channel to convolve at width 32"):
        timm.create_model("patnet_t0", n_div=64)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"num_heads=5 does not divide the attention width 192"):
        timm.create_model("patnet_t0", num_heads=5)


def test_unknown_mixer_and_activation():
    with pytest.raises(ValueError, match="mixers must give one of"):
        timm.create_model("patnet_t0", mixers=("pat_ch", "pat_ch", "pat_ch", "conv"))
    with pytest.raises(ValueError, match="act_layer"):
        timm.create_model("patnet_t0", act_layer="not_an_activation")


def test_batch_of_one_in_training():
    model = timm.create_model("patnet_t0", num_classes=10).train()
    with pytest.raises(ValueError, match=r"batch of at least 2 in training mode.*model.eval\(\)"):
        model(fixed_input(1, 3, 64, 64))


def test_pretrained_without_file():
    with pytest.raises(ValueError, match=r"no pretrained weights are hosted for patnet_t0.*file=PATH"):
        timm.create_model("patnet_t0", pretrained=True)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.pth")))


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": _RunsCode()}}, path)
    with pytest.raises(ValueError, match="refusing to load .*not a plain weights file"):
        timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("suffix,content", [(".pth", b"\x00garbage"), (".safetensors", b"garbage"), (".pth", b"")])
def test_corrupt_checkpoint(tmp_path, suffix, content):
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="could not read checkpoint .*corrupt"):
        timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(timm.create_model("patnet_t0").state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="could not read checkpoint"):
        timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "t2.pth"
    torch.save(timm.create_model("patnet_t2").state_dict(), path)
    with pytest.raises(ValueError, match="does not fit patnet_t0 with the given arguments"):
        timm.create_model("patnet_t0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
