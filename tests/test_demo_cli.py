"""The `patnet demo` command and the CLI's error handling."""
import pytest

from patnet.cli import main


def test_demo_prints_params_and_macs(capsys):
    assert main(["demo", "--models", "patnet_t0", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "patnet_t0" in out and "3,486,160" in out


def test_unknown_model_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--models", "patnet_t9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet demo: error: unknown model 'patnet_t9'") and "\n" not in err


def test_bad_flag_value(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--img-size", "0"])
    assert "--img-size must be positive" in capsys.readouterr().err
