import pytest

from inplace_ttt.cli import main


def test_bad_values_are_named_with_exit_code_2(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert main(["demo", "--row-length", "100", "--chunk-size", "64"]) == 2
    assert "must hold at least two TTT chunks" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lengths", "999999"], "at most 8192 tokens, the embedded base model's positions; got lengths up to 999999"),
        (["--learning-rate", "nan"], "learning_rate must be a finite number > 0; got nan"),
        (["--passages", "0"], "passages must be >= 1; got 0"),
    ],
)
def test_settings_are_refused_before_anything_trains_or_is_written(tmp_path, capsys, flags, message):
    """These were refused only after minutes of training, or not at all."""
    assert main(["demo", "--out", str(tmp_path / "demo"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_the_old_flag_name_is_read_with_a_warning(capsys):
    with pytest.warns(FutureWarning, match="--ttt-learning-rate is deprecated; use --ttt-params-learning-rate"):
        assert main(["demo", "--steps", "0", "--ttt-learning-rate", "1e-4"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
