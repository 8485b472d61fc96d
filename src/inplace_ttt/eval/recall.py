"""Multi-query associative recall, after Zoology's MQAR (Arora et al., 2023, arXiv 2312.04927).

A sequence opens with `pairs` key-value pairs ``k1 v1 k2 v2 ...`` (single tokens), then filler
tokens, then every key again in a shuffled order, each followed by its value: ``k7 v7 k2 v2 ...``.
The model is scored teacher-forced, as Zoology scores: after each queried key, is its most likely
next token the key's value? The filler puts the pairs `gap` tokens before the first query, so a
model whose attention window is shorter than the gap cannot see them and sits at chance
(1 / number of values); a fast weight that stored the pairs can recall them.

Keys, values and filler are disjoint sets of the tokenizer's own word-like tokens, so any
tokenizer works; the same seed gives the same sequences (our own generator, nothing downloaded).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from .stream import next_token_argmax

TASK = "recall"
_WORDLIKE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class RecallSample:
    index: int
    ids: list[int]  # the whole sequence, exactly the requested length
    queries: list[int]  # positions of the queried keys; the value is the token after each
    answers: list[int]  # the value expected after each queried key
    gap: int  # tokens between the last pair and the first query

    @property
    def length(self) -> int:
        return len(self.ids)


def recall_vocabulary(tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Disjoint ``(keys, values, filler)`` token ids: the tokenizer's word-like tokens (letters or
    digits, after stripping spaces) dealt out in turn, so that each set is a fixed set per tokenizer."""
    special = set(tokenizer.all_special_ids)
    words = [i for i in range(len(tokenizer)) if i not in special and _WORDLIKE.match(tokenizer.decode([i]).strip())]
    if len(words) < 12:
        raise ValueError(f"the tokenizer has only {len(words)} word-like tokens; the recall task needs at least 12")
    return words[0::3], words[1::3], words[2::3]


def make_recall(tokenizer, length: int, count: int, seed: int = 0, pairs: int = 16) -> list[RecallSample]:
    """`count` sequences of exactly `length` tokens, each with `pairs` pairs all queried at its end."""
    keys, values, filler = recall_vocabulary(tokenizer)
    pairs = min(pairs, len(keys))
    gap = length - 4 * pairs
    if gap < 0:
        raise ValueError(f"recall: {length} tokens cannot hold {pairs} pairs and their {pairs} queries ({4 * pairs} tokens)")
    out = []
    for index in range(count):
        rng = random.Random(f"{seed}:{TASK}:{length}:{pairs}:{index}")  # a str seed hashes the same in every process
        chosen = rng.sample(keys, pairs)
        table = {k: rng.choice(values) for k in chosen}
        asked = rng.sample(chosen, pairs)
        ids = [t for k in chosen for t in (k, table[k])] + [rng.choice(filler) for _ in range(gap)]
        queries = [len(ids) + 2 * i for i in range(pairs)]
        ids += [t for k in asked for t in (k, table[k])]
        out.append(RecallSample(index, ids, queries, [table[k] for k in asked], gap))
    return out


def recall_hits(model, samples: list[RecallSample], piece: int, batch: int = 8) -> list[list[bool]]:
    """Per sample, per queried key (in query order): does the model's most likely next token equal the value?"""
    device = next(model.parameters()).device
    hits = []
    for k in range(0, len(samples), batch):
        group = samples[k : k + batch]
        if len({s.length for s in group}) != 1:
            raise ValueError("recall_scores: a batch needs samples of one length")
        length, first = group[0].length, min(q for s in group for q in s.queries)
        predicted = next_token_argmax(model, torch.tensor([s.ids for s in group], device=device), piece, last=length - first).cpu()
        for s, row in zip(group, predicted):  # row[i]: the prediction after position first + i
            hits.append((row[[q - first for q in s.queries]] == torch.tensor(s.answers)).tolist())
    return hits


def recall_scores(model, samples: list[RecallSample], piece: int, batch: int = 8) -> list[float]:
    """Per sample, the share of queried keys after which the model predicts the right value."""
    return [sum(h) / len(h) for h in recall_hits(model, samples, piece, batch)]


def stored_slot(sample: RecallSample) -> list[int]:
    """Per queried key (in query order), the index of its pair among the stored pairs (0: the first)."""
    stored = sample.ids[0 : 2 * len(sample.queries) : 2]
    return [stored.index(sample.ids[q]) for q in sample.queries]


def chance(tokenizer) -> float:
    """The accuracy of guessing a value uniformly."""
    return 1.0 / len(recall_vocabulary(tokenizer)[1])
