"""The flags several commands share: Moshi's LMModel keyword arguments are ``--lm-kwargs`` everywhere,
``--lm-config`` (the moshi-* commands' old name) still read, with a FutureWarning."""

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
