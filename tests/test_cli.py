import json
import re

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


def test_export_release_writes_a_checkpoint_that_loads_back(tmp_path, capsys):
    import torch

    import inplace_ttt
    from tests.tiny_hf import VOCAB, converted, tiny_tokenizer

    model = converted("llama")
    model.save_pretrained(tmp_path / "ours")
    tiny_tokenizer(["a", "b"]).save_pretrained(tmp_path / "ours")
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "theirs"), "--format", "release"]) == 0
    assert f"release checkpoint: {tmp_path / 'theirs'}" in capsys.readouterr().out
    assert (tmp_path / "theirs" / "tokenizer.json").is_file()
    ids = torch.randint(3, VOCAB, (2, 11))
    with torch.no_grad():
        assert torch.equal(inplace_ttt.from_pretrained(tmp_path / "theirs")(input_ids=ids).logits, model(input_ids=ids).logits)
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "theirs"), "--format", "release"]) == 2
    err = capsys.readouterr().err
    assert "ittt export: error: export_release:" in err and "exists and is not an empty directory" in err


def test_export_refuses_a_format_it_does_not_know(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "a", "b", "--format", "gguf"])
    assert e.value.code == 2 and "invalid choice: 'gguf'" in capsys.readouterr().err


# bad input: one message naming the file or flag, exit code 2 -----------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny In-Place TTT checkpoint and its base model, each with a tokenizer, and some text."""
    from tests.tiny_hf import converted, tiny, tiny_tokenizer

    root = tmp_path_factory.mktemp("models")
    words = [f"w{i}" for i in range(80)]
    for name, model in (("ttt", converted("llama")), ("base", tiny())):
        model.save_pretrained(root / name)
        tiny_tokenizer(words).save_pretrained(root / name)
    (root / "text.txt").write_text(" ".join(words * 3))
    return root


def broken_copy(saved, tmp_path, name, change):
    """A copy of the checkpoint `name` with `change(folder)` applied."""
    import shutil

    folder = tmp_path / f"{name}-broken"
    shutil.copytree(saved / name, folder)
    change(folder)
    return folder


def edit_json(key_path, value):
    def change(folder):
        data = json.loads((folder / "config.json").read_text())
        *parents, leaf = key_path.split(".")
        node = data
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
        (folder / "config.json").write_text(json.dumps(data))

    return change


def cut_weights(fraction):
    def change(folder):
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])

    return change


BROKEN = {
    "truncated weights": (
        "ttt",
        cut_weights(0.5),
        r"model.safetensors is not a readable safetensors file \(.*incomplete metadata.*\): it is empty, cut short or corrupt",
    ),
    "empty weights": ("base", cut_weights(0.0), r"model.safetensors is not a readable safetensors file \(.*header too small.*\)"),
    "conv kernel edited": (
        "ttt",
        edit_json("inplace_ttt.conv_kernel", 3),
        r"TTT weights do not fit its config.json: .*conv_weight \[32, 5\] \(config.json makes it \[32, 3\]\)",
    ),
    "hidden size edited": ("base", edit_json("hidden_size", 64), r"the weights do not fit its config.json \(sizes differ"),
    "base_model_type missing": (
        "ttt",
        edit_json("inplace_ttt.base_model_type", None),
        r"config.json: inplace_ttt.base_model_type must name the transformers model type .*; got None",
    ),
    "config.json not JSON": ("ttt", lambda f: (f / "config.json").write_text("{oops"), r"config.json.* is not (a )?valid JSON"),
}


@pytest.mark.parametrize("case", BROKEN)
@pytest.mark.parametrize("command", ["eval", "doctor"])
def test_a_broken_model_folder_is_named(saved, tmp_path, capsys, case, command):
    name, change, message = BROKEN[case]
    folder = broken_copy(saved, tmp_path, name, change)
    if command == "eval":
        args = ["eval", "--model", str(folder), "--tasks", "loss", "--lengths", "32", "--data", str(saved / "text.txt"), "--out", str(tmp_path / "out")]
    else:
        args = ["doctor", str(saved / "ttt") if name == "base" else str(folder), "--data", str(saved / "text.txt")] + (
            ["--base", str(folder)] if name == "base" else []
        )
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"ittt {command}: error: ") and re.search(message, last), last
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


def test_eval_results_are_strict_json(saved, tmp_path):
    assert (
        main(["eval", "--model", str(saved / "base"), "--tasks", "loss", "--lengths", "32", "--data", str(saved / "text.txt"), "--out", str(tmp_path / "out")])
        == 0
    )
    json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in results.json"))


@pytest.mark.parametrize(
    "data, flags, message",
    [
        ("text.txt", ["--length", "-1"], r"--length and --rows must be >= 1; got -1 and 2"),
        ("text.txt", ["--rows", "0"], r"--length and --rows must be >= 1; got 12 and 0"),
        (
            "text.txt",
            ["--length", "100000"],
            r"--data .*text.txt holds \d+ tokens \(Moshi: steps\), fewer than one row of --length 100000: give more data or a smaller --length",
        ),
        ("empty.txt", [], r"data: \['.*empty.txt'\] holds no non-empty documents"),
        ("rows.jsonl", [], r"data: .*rows.jsonl has no field 'text' \(fields: \['body'\]\); set data.text_field"),
        ("nope", [], r"data: no such file or folder: .*nope"),
    ],
)
def test_doctor_names_bad_data_and_flags(saved, tmp_path, capsys, data, flags, message):
    (saved / "empty.txt").write_text("")
    (saved / "rows.jsonl").write_text(json.dumps({"body": "w1 w2"}) + "\n")
    assert main(["doctor", str(saved / "ttt"), "--data", str(saved / data), *flags]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch("ittt doctor: error: " + message, last), last


def test_doctor_reads_any_document_format_and_says_when_it_uses_fewer_rows(saved, tmp_path, capsys):
    import datasets

    datasets.Dataset.from_dict({"body": [" ".join(f"w{i}" for i in range(80)) * 3]}).to_parquet(str(tmp_path / "docs.parquet"))
    assert main(["doctor", str(saved / "ttt"), "--data", str(tmp_path / "docs.parquet"), "--text-field", "body", "--rows", "1000"]) == 0
    captured = capsys.readouterr()
    assert "all checks passed" in captured.out
    assert re.search(r"doctor: --data .*docs.parquet holds \d+ tokens \(Moshi: steps\), enough for \d+ of the 1000 rows of --rows", captured.err)


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
