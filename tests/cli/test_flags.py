"""The flags several commands share: Moshi's LMModel keyword arguments are ``--lm-kwargs`` everywhere,
``--lm-config`` (the moshi-* commands' old name) still read, with a FutureWarning."""

import re

import pytest

from inplace_ttt.cli import main

REQUIRED = {
    "moshi-encode": ["manifest.jsonl", "--mimi", "mimi.safetensors", "--tokenizer", "tok.model", "--out", "codes"],
    "moshi-infer": ["in.wav", "out.wav", "--weights", "model.safetensors", "--mimi", "mimi.safetensors"],
    "moshi-eval": ["--model", "a=model.safetensors", "--data", "codes"],
}


@pytest.mark.parametrize("command", REQUIRED)
@pytest.mark.parametrize("flag", ["--lm-kwargs", "--lm-config"])
def test_every_moshi_command_reads_lm_kwargs_under_both_names(tmp_path, capsys, monkeypatch, command, flag):
    pytest.importorskip("moshi")
    monkeypatch.chdir(tmp_path)
    args = [command, *REQUIRED[command], flag, "missing.json", "--device", "cpu"]
    if flag == "--lm-config":
        with pytest.warns(FutureWarning, match="--lm-config is deprecated; use --lm-kwargs"):
            assert main(args) == 2
    else:
        assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"ittt {command}: error: --lm-kwargs: no such file: missing.json"


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("moshi-infer", ["--device", "tpu"], r"argument --device: invalid choice: 'tpu' \(choose from '?auto'?, '?cpu'?, '?cuda'?\)"),
        ("moshi-eval", ["--device", "tpu"], r"argument --device: invalid choice: 'tpu'"),
        ("moshi-infer", ["--temp", "nan"], r"argument --temp: must be a finite number >= 0; got 'nan'"),
        ("moshi-infer", ["--temp-text", "-0.5"], r"argument --temp-text: must be a finite number >= 0; got '-0.5'"),
        ("moshi-infer", ["--temp", "inf"], r"argument --temp: must be a finite number >= 0; got 'inf'"),
    ],
)
def test_moshi_commands_refuse_unknown_devices_and_bad_temperatures_before_anything_runs(tmp_path, capsys, monkeypatch, command, extra, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main([command, *REQUIRED[command], *extra])
    assert exit.value.code == 2
    assert re.search(message, capsys.readouterr().err), message
    assert list(tmp_path.iterdir()) == []


def test_a_leading_tilde_in_a_path_flag_is_the_home_folder(capsys, monkeypatch, tmp_path):
    """The shell expands ``--out ~/x`` but leaves ``--out=~/x`` as it is: the flag does it then."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["eval", "--model=~/missing-model", "--out=~/report"]) == 2
    assert f"--model: no such model folder: {tmp_path}/missing-model" in capsys.readouterr().err
    assert main(["doctor", "~/missing-model", "--data=~/docs.txt"]) == 2
    assert str(tmp_path / "missing-model") in capsys.readouterr().err
