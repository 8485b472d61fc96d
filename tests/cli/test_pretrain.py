import re

import pytest

from inplace_ttt.cli import main


def test_pretrain_help_lists_its_keys(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert re.search(r"\n    model\.hidden_size +256 +int  # width", text) and re.search(r"\n    tokenizer\.vocab_size +4096 +int\b", text)
    assert "  ttt: (default null: off; give the section to turn it on)\n    ttt.layers" in text
    assert re.search(r"\n    train\.mode +full +str; one of: full, ttt_only, lora  # what trains", text)


def test_pretrain_overrides_are_applied_and_checked(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"ittt pretrain: error: config file not found: {tmp_path / 'missing.yaml'}"
    (tmp_path / "run.yaml").write_text("data: {train: [x.txt]}\n")
    assert main(["pretrain", str(tmp_path / "run.yaml"), "--train.no_such_key", "1"]) == 2
    assert "ittt pretrain: error: unknown key(s) ['train.no_such_key']" in capsys.readouterr().err
