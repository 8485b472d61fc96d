"""The embedded corpus and base model: present, loadable, long, disjoint, and actually trained."""

import json
import math
import re

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM

from inplace_ttt.assets import SPLITS, base_model_dir, corpus_files
from inplace_ttt.documents import read_documents


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(base_model_dir())


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(base_model_dir(), dtype=torch.float32).eval()


def _rows(split):
    return pq.read_table(corpus_files(split)[0]).to_pylist()


def test_corpus_splits_load_and_hold_long_documents():
    for split in SPLITS:
        docs = read_documents(corpus_files(split))
        assert len(docs) == len(_rows(split)) >= 10
        lengths = sorted(map(len, docs))
        assert lengths[len(lengths) // 2] >= 20_000, f"{split}: median document of {lengths[len(lengths) // 2]} characters"
    assert sum(len(d) for d in read_documents(corpus_files("train"))) > 5_000_000


def test_heldout_books_are_never_trained_on():
    def book(row):
        return row["id"].split(".", 1)[1]  # "WEB.Josh" -> "Josh", the same book in either translation

    train, heldout = _rows("train"), _rows("heldout")
    assert {book(r) for r in train}.isdisjoint({book(r) for r in heldout})
    assert {r["text"] for r in train}.isdisjoint({r["text"] for r in heldout})
    # no long passage of a held-out book appears in the training text
    train_text = "\n".join(r["text"] for r in train)
    for r in heldout:
        verse = max(r["text"].split("\n"), key=len)[:200]
        assert verse not in train_text, r["id"]


def test_corpus_is_clean_text():
    text = "\n".join(r["text"] for r in _rows("heldout"))
    assert "<" not in text and ">" not in text, "OSIS markup left in the text"
    assert not re.search(r"[a-z][A-Z][a-z]{2,}", text), "words run together where a footnote was dropped"


def test_corpus_and_model_fit_the_size_budget():
    corpus = sum(p.stat().st_size for p in (base_model_dir().parent / "corpus").iterdir())
    model = sum(p.stat().st_size for p in base_model_dir().iterdir())
    assert corpus <= 10 * 2**20 and model <= 30 * 2**20


def test_corpus_files_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be one of"):
        corpus_files("validation")


def test_tokenizer_round_trips_any_text(tokenizer):
    heldout = read_documents(corpus_files("heldout"))[0][:5000]
    for text in (heldout, "Ünïcödé, emoji 🙂, tabs\tand\n\nnewlines, 12345 — “quotes”", "  leading and trailing  "):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None  # byte level: nothing is unknown
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token} == {"<s>", "</s>", "<pad>"}
    assert len(tokenizer) == 4096


def test_base_model_is_a_small_sliding_window_model(model):
    config = model.config
    assert isinstance(model, MistralForCausalLM) and config.hidden_act == "silu"
    assert config.sliding_window == 128  # well below the demo's 1024-token rows
    assert 2e6 <= model.num_parameters() <= 8e6
    assert config.max_position_embeddings >= 4096
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(base_model_dir()))
    summary = json.loads((base_model_dir() / "pretrain_summary.json").read_text())
    assert summary["row_length"] == 1024 and summary["parameters"] == model.num_parameters()
    assert (base_model_dir() / "TRAINING.md").is_file()


def test_base_model_heldout_loss_is_far_below_uniform(model, tokenizer):
    docs = read_documents(corpus_files("heldout"))
    ids = torch.tensor([tokenizer(d, add_special_tokens=False).input_ids[:1024] for d in docs[:2]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.5 * math.log(model.config.vocab_size), f"held-out loss {loss:.3f} vs uniform {math.log(model.config.vocab_size):.3f}"
