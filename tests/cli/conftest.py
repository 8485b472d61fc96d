import pytest


@pytest.fixture(scope="package")
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
