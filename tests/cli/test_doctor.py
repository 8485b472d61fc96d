import json
import re
import warnings

import pytest

import inplace_ttt
from inplace_ttt.cli import main
from tests.cli.broken_folders import BROKEN, broken_copy
from tests.tiny_hf import VOCAB, converted, tiny, tiny_tokenizer


def test_doctor_passes_a_fresh_conversion_and_fails_a_clipped_one(tmp_path, capsys):
    words = [f"w{i}" for i in range(VOCAB - 4)]
    converted(trained=False).save_pretrained(tmp_path / "ttt")
    tiny().save_pretrained(tmp_path / "base")
    tiny_tokenizer(words).save_pretrained(tmp_path / "ttt")
    data = tmp_path / "data.txt"
    data.write_text(" ".join(words[i % len(words)] for i in range(200)))
    assert main(["doctor", str(tmp_path / "ttt"), "--data", str(data), "--base", str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out
    assert "PASS  warm start" in out and "all checks passed" in out
    # a broken one exits non-zero and says why
    broken = inplace_ttt.from_pretrained(tmp_path / "ttt")
    inplace_ttt.set_clip_tau(broken, 1e-5)
    broken.save_pretrained(tmp_path / "clipped")
    tiny_tokenizer(words).save_pretrained(tmp_path / "clipped")
    assert main(["doctor", str(tmp_path / "clipped"), "--data", str(data)]) == 1
    assert "FAIL  no clipping in training" in capsys.readouterr().out


def test_a_base_of_another_architecture_or_size_is_a_failed_check_not_a_traceback(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, PhiConfig

    words = [f"w{i}" for i in range(VOCAB - 4)]
    converted(trained=False).save_pretrained(tmp_path / "ttt")
    tiny_tokenizer(words).save_pretrained(tmp_path / "ttt")
    data = tmp_path / "data.txt"
    data.write_text(" ".join(words[i % len(words)] for i in range(200)))
    phi = PhiConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    AutoModelForCausalLM.from_config(phi).save_pretrained(tmp_path / "phi")
    tiny(intermediate_size=48).save_pretrained(tmp_path / "narrow")
    for base, detail in (("phi", "layer 0: the base's PhiMLP lacks ['gate_proj'"), ("narrow", "layer 0: down projection [32, 48] vs [32, 64]")):
        assert main(["doctor", str(tmp_path / "ttt"), "--data", str(data), "--base", str(tmp_path / base)]) == 1
        out = capsys.readouterr().out
        assert "FAIL  base model matches" in out and detail in out and "pass the model this one was converted from" in out


@pytest.mark.integration
@pytest.mark.parametrize("flag", ["--lm-kwargs", "--lm-config"])
def test_doctor_on_a_moshi_model_and_a_conversation(tmp_path, capsys, flag):
    """A Moshi final/ and one conversation's codes; --lm-config, the old name of --lm-kwargs, still works (with a warning)."""
    pytest.importorskip("moshi")
    from safetensors.torch import save_file

    from inplace_ttt.families.moshi import save_ttt
    from tests.tiny_moshi import TINY, random_codes, tiny_lm, write_tiny_checkpoint

    base = write_tiny_checkpoint(tmp_path / "base.safetensors")
    save_ttt(inplace_ttt.convert(tiny_lm(), inplace_ttt.TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings")), tmp_path / "final")
    (tmp_path / "lm.json").write_text(json.dumps(TINY))
    save_file({"codes": random_codes(base, 1, 16)[0]}, str(tmp_path / "conversation.safetensors"))
    args = ["doctor", str(tmp_path / "final"), "--data", str(tmp_path / "conversation.safetensors"), flag, str(tmp_path / "lm.json")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--base", str(tmp_path / "base.safetensors"), "--length", "12"]) == 0
    renamed = [str(w.message) for w in caught if w.category is FutureWarning and "--lm-" in str(w.message)]
    assert renamed == (["--lm-config is deprecated; use --lm-kwargs"] if flag == "--lm-config" else [])
    out = capsys.readouterr().out
    assert "on 1 x 12 steps of" in out and "PASS  warm start" in out and "all checks passed" in out
    assert main([*args, "--length", "0"]) == 2
    assert "--length and --rows must be >= 1" in capsys.readouterr().err
    (tmp_path / "wider.json").write_text(json.dumps({**TINY, "dim": TINY["dim"] * 2}))
    assert main([*args[:-1], str(tmp_path / "wider.json")]) == 2
    err = capsys.readouterr().err
    assert "final/model.safetensors does not load with the LMModel keyword arguments" in err and "wider.json: size mismatch for emb.0.weight" in err, err


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_model_folder_is_named(saved, tmp_path, capsys, case):
    name, change, message = BROKEN[case]
    folder = broken_copy(saved, tmp_path, name, change)
    args = ["doctor", str(saved / "ttt") if name == "base" else str(folder), "--data", str(saved / "text.txt")] + (
        ["--base", str(folder)] if name == "base" else []
    )
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ittt doctor: error: ") and re.search(message, last), last


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
