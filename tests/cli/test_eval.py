import json
import re

import pytest

from inplace_ttt.cli import main
from tests.cli.broken_folders import BROKEN, broken_copy


def test_bad_lengths_are_named_with_exit_code_2(capsys):
    assert main(["eval", "--model", "m", "--lengths", "1k,abc"]) == 2
    assert "--lengths: 'abc' is not a token count" in capsys.readouterr().err


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_model_folder_is_named(saved, tmp_path, capsys, case):
    name, change, message = BROKEN[case]
    folder = broken_copy(saved, tmp_path, name, change)
    args = ["eval", "--model", str(folder), "--tasks", "loss", "--lengths", "32", "--data", str(saved / "text.txt"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ittt eval: error: ") and re.search(message, last), last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--samples", "0"], r"--samples must be >= 1; got 0"),
        (["--tokens-per-forward", "-8"], r"--tokens-per-forward must be >= 1; got -8"),
        (["--piece", "-8"], r"--tokens-per-forward must be >= 1; got -8"),  # its old name
        (["--final-block", "0"], r"--final-block must be >= 1; got 0"),
        (["--model", "runs/no-such-model/final"], r"--model: no such model folder: runs/no-such-model/final"),
    ],
)
def test_eval_refuses_counts_below_one_and_missing_models(saved, tmp_path, capsys, flags, message):
    model = [] if "--model" in flags else ["--model", str(saved / "base")]
    args = ["eval", *model, "--tasks", "loss", "--lengths", "32", "--out", str(tmp_path / "out"), *flags]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch("ittt eval: error: " + message, last), last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("old, new, value", [("--piece", "--tokens-per-forward", "-8"), ("--block", "--final-block", "0")])
def test_old_flag_names_are_read_with_a_warning(saved, tmp_path, capsys, old, new, value):
    args = ["eval", "--model", str(saved / "base"), "--tasks", "loss", "--lengths", "32", "--out", str(tmp_path / "out"), old, value]
    with pytest.warns(FutureWarning, match=f"{old} is deprecated; use {new}"):
        assert main(args) == 2
    assert f"{new} must be >= 1; got {value}" in capsys.readouterr().err


def test_eval_results_are_strict_json(saved, tmp_path):
    assert (
        main(["eval", "--model", str(saved / "base"), "--tasks", "loss", "--lengths", "32", "--data", str(saved / "text.txt"), "--out", str(tmp_path / "out")])
        == 0
    )
    json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in results.json"))


def test_eval_refuses_lengths_past_learned_positions_and_warns_for_rope(saved, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_hf import tiny_tokenizer

    gpt2 = tmp_path / "gpt2"  # learned absolute positions: 64 of them
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    tiny_tokenizer([f"w{i}" for i in range(80)]).save_pretrained(gpt2)
    args = ["--tasks", "loss", "--lengths", "128", "--data", str(saved / "text.txt"), "--out", str(tmp_path / "out")]
    assert main(["eval", "--model", str(gpt2), *args]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"ittt eval: error: --lengths: 128 tokens is past {gpt2}'s 64 learned positions: give lengths up to 64"
    )
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match=r"--lengths up to 512 is past .*'s max_position_embeddings 256: a RoPE model extrapolates there"):
        assert main(["eval", "--model", str(saved / "base"), *args[:3], "512", *args[4:]]) == 0
