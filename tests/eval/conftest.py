import copy
import re

import pytest
import torch
import torch.nn.functional as F

import inplace_ttt
from inplace_ttt.eval.ruler import ADJECTIVES, NOISE, NOUNS
from tests.tiny_hf import tiny, tiny_tokenizer, ttt_config

WORDS = sorted(set(re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", NOISE + " " + " ".join(ADJECTIVES + NOUNS)))) + [
    "What",
    "is",
    "the",
    "secret",
    "code",
    "for",
    "in",
    "text",
    "above",
    "?",
    "The",
    "Secret",
    "codes",
    "are",
    "hidden",
    "below",
    "Remember",
    "them",
    ":",
    "you",
    "will",
    "be",
    "asked",
    "about",
    "-",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(WORDS)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """A tiny base model and its converted copy (with trained-looking TTT weights), saved."""
    root = tmp_path_factory.mktemp("models")
    base = tiny(vocab_size=len(tokenizer))
    ttt = inplace_ttt.convert(copy.deepcopy(base), ttt_config(chunk_size=16))
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(ttt):
            layer.ttt.conv_weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    for name, model in (("base", base), ("ttt", ttt)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "base", root / "ttt"


def full_nll(model, ids):
    """The reference: one forward over the whole input, no cache."""
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
    return F.cross_entropy(logits[:-1], ids[1:], reduction="none")


CHAT = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
