"""Losses by time bucket: each conversation's sums and counts, pooled over conversations."""

import math

import pytest
import torch

from inplace_ttt.eval.moshi.buckets import bucket_sums, paired, pooled

nan = math.nan


def test_each_metric_sums_its_values_by_bucket_leaving_out_the_missing():
    nll = {
        "text": torch.tensor([1.0, 2.0, nan, 4.0, 5.0], dtype=torch.float64),
        "words": torch.tensor([True, False, False, True, True]),
        "audio": torch.tensor([[0.5, nan, 1.5, 2.5, 3.5], [10.0, 20.0, 30.0, 40.0, nan]], dtype=torch.float64),
    }
    sums = bucket_sums(nll, bucket_steps=2, n_buckets=4)  # steps 0-1, 2-3, 4, and an empty bucket
    assert sums["text"] == {"sum": [3.0, 4.0, 5.0, 0.0], "count": [2, 1, 1, 0]}
    assert sums["text_words"] == {"sum": [1.0, 4.0, 5.0, 0.0], "count": [1, 1, 1, 0]}
    assert sums["audio"] == {"sum": [30.5, 74.0, 3.5, 0.0], "count": [3, 4, 1, 0]}
    assert sums["audio_semantic"] == {"sum": [0.5, 4.0, 3.5, 0.0], "count": [1, 2, 1, 0]}


def test_pooled_means_weigh_every_value_and_resample_conversations():
    def sums(text_sums, text_counts):
        return {m: {"sum": text_sums, "count": text_counts} for m in ("text", "text_words", "audio", "audio_semantic")}

    per_file = {"a": sums([2.0, 6.0, 0.0], [1, 3, 0]), "b": sums([9.0, 0.0, 0.0], [3, 0, 0])}
    got = pooled(per_file, 3)["text"]
    assert got["loss"] == [pytest.approx(11 / 4), 2.0, None] and got["count"] == [4, 3, 0]
    low, high = got["interval"][0]
    assert 2.0 <= low <= 11 / 4 <= high <= 3.0  # between the two conversations' own means
    assert got["interval"][1] is None and got["interval"][2] is None  # one conversation, none: no interval


def test_paired_differences_pool_each_model_then_subtract_with_an_interval_over_pairs():
    def sums(text_sums, text_counts):
        return {m: {"sum": text_sums, "count": text_counts} for m in ("text", "text_words", "audio", "audio_semantic")}

    base = {"a": sums([2.0, 6.0, 0.0], [1, 3, 0]), "b": sums([9.0, 0.0, 0.0], [3, 0, 0]), "c": sums([20.0, 1.0, 0.0], [4, 1, 0])}
    model = {"a": sums([1.5, 5.0, 0.0], [1, 3, 0]), "b": sums([7.5, 0.0, 0.0], [3, 0, 0]), "c": sums([18.0, 2.0, 0.0], [4, 1, 0])}
    got = paired(model, base, 3)["text"]
    assert got["difference"] == [pytest.approx(27 / 8 - 31 / 8), pytest.approx(7 / 4 - 7 / 4), None]  # pooled loss minus pooled loss
    low, high = got["interval"][0]
    # each conversation lowers the loss per value by 0.5: every resample of pairs says -0.5, whatever the conversations' difficulty
    assert low == pytest.approx(-0.5) and high == pytest.approx(-0.5)
    assert got["interval"][1][0] < 0 < got["interval"][1][1] and got["interval"][2] is None
