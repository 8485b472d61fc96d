import pytest

from inplace_ttt.cli import main


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


def test_a_folder_without_a_tokenizer_is_exported_with_a_warning(tmp_path, capsys):
    from tests.tiny_hf import converted

    converted("llama").save_pretrained(tmp_path / "ours")
    with pytest.warns(UserWarning, match="ours has no tokenizer; their RULER pipeline needs one beside the weights"):
        assert main(["export", str(tmp_path / "ours"), str(tmp_path / "theirs"), "--format", "release"]) == 0
    assert (tmp_path / "theirs" / "config.json").is_file() and not (tmp_path / "theirs" / "tokenizer.json").exists()


def test_export_refuses_a_format_it_does_not_know(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "a", "b", "--format", "gguf"])
    assert e.value.code == 2 and "invalid choice: 'gguf'" in capsys.readouterr().err
