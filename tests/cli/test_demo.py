import pytest

from inplace_ttt.cli import main


def test_bad_values_are_named_with_exit_code_2(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert main(["demo", "--row-length", "100", "--chunk-size", "64"]) == 2
    assert "must hold at least two TTT chunks" in capsys.readouterr().err


def test_the_old_flag_name_is_read_with_a_warning(capsys):
    with pytest.warns(FutureWarning, match="--ttt-learning-rate is deprecated; use --ttt-params-learning-rate"):
        assert main(["demo", "--steps", "0", "--ttt-learning-rate", "1e-4"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
