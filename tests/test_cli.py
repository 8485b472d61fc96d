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
