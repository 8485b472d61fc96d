"""`ittt serve`'s own flags, checked before any server starts (tests/test_serve.py runs the server)."""

import pytest

from inplace_ttt.cli import main


def test_clip_tau_is_refused_for_a_plain_folder(saved, capsys):
    assert main(["serve", str(saved / "base"), "--clip-tau", "1e-5", "--port", "0"]) == 2
    assert f"ittt serve: error: --clip-tau applies to an In-Place TTT folder; {saved / 'base'} is not one" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--continuous-batching", "--continuous-batching=true"])
def test_continuous_batching_is_refused(saved, capsys, option):
    assert main(["serve", str(saved / "ttt"), option]) == 2
    err = capsys.readouterr().err
    assert f"ittt serve: error: {option} is not supported for In-Place TTT models: continuous batching packs requests" in err


def test_the_folder_must_exist_and_come_first(tmp_path, capsys):
    assert main(["serve", "--port", "8000", str(tmp_path)]) == 2
    assert "ittt serve: error: 8000: no such model folder (the folder comes first: ittt serve FOLDER [options])" in capsys.readouterr().err


def test_clip_tau_takes_a_number_or_none(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "somewhere", "--clip-tau", "small"])
    assert e.value.code == 2 and "argument --clip-tau: must be a number or none; got 'small'" in capsys.readouterr().err
