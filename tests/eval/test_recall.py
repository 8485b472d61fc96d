"""The associative-recall generator (layout, determinism, disjoint vocabularies) and its scoring
against a plain loop over one full forward."""

import pytest
import torch

from inplace_ttt.eval.recall import chance, make_recall, recall_hits, recall_scores, recall_vocabulary, stored_slot
from tests.tiny_hf import tiny


def test_vocabularies_are_disjoint_word_tokens(tokenizer):
    keys, values, filler = recall_vocabulary(tokenizer)
    assert not (set(keys) & set(values) or set(keys) & set(filler) or set(values) & set(filler))
    special = set(tokenizer.all_special_ids)
    for i in keys + values + filler:
        assert i not in special and tokenizer.decode([i]).strip().isalnum()
    assert chance(tokenizer) == 1 / len(values)


@pytest.mark.parametrize("length, pairs", [(64, 4), (300, 16), (1024, 8)])
def test_pairs_first_then_filler_then_every_key_queried_once(tokenizer, length, pairs):
    keys, values, filler = map(set, recall_vocabulary(tokenizer))
    for s in make_recall(tokenizer, length, 3, seed=1, pairs=pairs):
        assert s.length == len(s.ids) == length and s.gap == length - 4 * pairs
        stored = dict(zip(s.ids[0 : 2 * pairs : 2], s.ids[1 : 2 * pairs : 2]))
        assert len(stored) == pairs and set(stored) <= keys and set(stored.values()) <= values
        assert set(s.ids[2 * pairs : 2 * pairs + s.gap]) <= filler
        assert s.queries[0] == 2 * pairs + s.gap and s.queries[-1] == length - 2
        asked = [s.ids[q] for q in s.queries]
        assert sorted(asked) == sorted(stored)  # every key asked once
        assert s.answers == [stored[k] for k in asked] == [s.ids[q + 1] for q in s.queries]


def test_same_seed_same_sequences(tokenizer):
    a, b, c = (make_recall(tokenizer, 128, 4, seed=seed, pairs=8) for seed in (0, 0, 1))
    assert [s.ids for s in a] == [s.ids for s in b] != [s.ids for s in c]
    assert len({tuple(s.ids) for s in a}) == 4  # the samples differ from each other


def test_too_short_is_refused(tokenizer):
    with pytest.raises(ValueError, match="cannot hold 16 pairs"):
        make_recall(tokenizer, 60, 1, pairs=16)


def test_scores_equal_a_plain_loop_over_full_forwards(tokenizer):
    model = tiny(vocab_size=len(tokenizer))
    samples = make_recall(tokenizer, 96, 5, pairs=6)
    expected = []
    for i, s in enumerate(samples):
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([s.ids]), use_cache=False).logits[0].argmax(-1)
        s.answers[: i + 1] = [int(predicted[q]) for q in s.queries[: i + 1]]  # what the model says: i + 1 of 6 right
        expected.append(sum(int(predicted[q]) == a for q, a in zip(s.queries, s.answers)) / len(s.queries))
    assert recall_scores(model, samples, piece=40, batch=2) == pytest.approx(expected)
    assert expected[0] < expected[-1]


def test_stored_slot_names_the_pair_each_query_asks_for(tokenizer):
    for s in make_recall(tokenizer, 128, 4, seed=2, pairs=8):
        slots = stored_slot(s)
        assert sorted(slots) == list(range(8))  # every stored pair asked once
        for q, slot, answer in zip(s.queries, slots, s.answers):
            assert s.ids[2 * slot] == s.ids[q] and s.ids[2 * slot + 1] == answer


def test_hits_are_per_query_and_average_to_the_scores(tokenizer):
    model = tiny(vocab_size=len(tokenizer))
    samples = make_recall(tokenizer, 96, 3, pairs=6)
    with torch.no_grad():
        predicted = [model(input_ids=torch.tensor([s.ids]), use_cache=False).logits[0].argmax(-1) for s in samples]
    samples[1].answers[2] = int(predicted[1][samples[1].queries[2]])  # one query the model answers right
    hits = recall_hits(model, samples, piece=32, batch=2)
    assert hits == [[int(p[q]) == a for q, a in zip(s.queries, s.answers)] for s, p in zip(samples, predicted)]
    assert hits[1][2] and recall_scores(model, samples, piece=32, batch=2) == pytest.approx([sum(h) / 6 for h in hits])
