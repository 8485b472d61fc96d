import pytest

from inplace_ttt.cli import main


def test_bad_values_are_named_with_exit_code_2(capsys):
    assert main(["eval", "--model", "m", "--lengths", "1k,abc"]) == 2
    assert "--lengths: 'abc' is not a token count" in capsys.readouterr().err
    assert main(["demo", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    assert main(["demo", "--row-length", "100", "--chunk-size", "64"]) == 2
    assert "must hold at least two TTT chunks" in capsys.readouterr().err


def test_unknown_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["eval", "--model", "m", "--bogus", "1"])
