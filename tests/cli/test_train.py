"""`ittt train --help` lists every key of both families' configs, read from their schemas."""

import re

import pytest

from inplace_ttt.cli import main


def help_text(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def key_line(text, key):
    (line,) = [line for line in text.splitlines() if line.split()[:1] == [key]]
    return line


def test_train_help_lists_the_keys_with_defaults_and_allowed_values(capsys):
    text = help_text(capsys, "train")
    assert text.startswith("usage: ittt train")
    transformers, rest = text.split("model_type: transformers\n")[1].split("model_type: moshi\n")
    moshi, scratch = rest.split("model_type: scratch\n")
    assert re.fullmatch(r"\s+model\.hidden_size\s+256\s+int  # .+", key_line(scratch, "model.hidden_size"))  # ittt pretrain's family
    assert re.fullmatch(r"\s+ttt\.chunk_size\s+1024\s+int  # tokens per chunk.+", key_line(transformers, "ttt.chunk_size"))
    assert re.fullmatch(r"\s+train\.learning_rate\s+5e-06\s+float  # .+", key_line(transformers, "train.learning_rate"))
    assert "str; one of: full, ttt_only, lora  # what trains" in key_line(transformers, "train.mode")
    assert re.fullmatch(r"\s+model\s+''\s+str  # .+", key_line(transformers, "model"))
    assert "  ttt: (null: off)" in transformers and "  data:" in transformers and "  lora:" in transformers
    # Moshi's sections, with its own defaults (a section's default_factory)
    assert re.fullmatch(r"\s+model\.weights\s+''\s+str  # .+", key_line(moshi, "model.weights"))
    assert re.fullmatch(r"\s+ttt\.target_source\s+token_embeddings\s+str; one of: hidden_states, token_embeddings  # .+", key_line(moshi, "ttt.target_source"))
    assert re.fullmatch(r"\s+train\.mode\s+ttt_only\s+str; one of: full, ttt_only, lora  # .+", key_line(moshi, "train.mode"))
    assert "data.text_field" not in moshi and "train.first_codebook_weight" not in transformers
    # and the modes, described
    assert re.search(r"train\.mode:\n  - `full`: every parameter;\n  - `ttt_only`: ", text)
