"""Losses by time into the conversation: sums per bucket of steps for each conversation, pooled
over the conversations into a mean with its 95% interval, and one model's pooled mean against a
baseline's, paired conversation by conversation."""

from __future__ import annotations

import torch

from ..intervals import ratio_difference_interval, ratio_interval

METRICS = ("text", "text_words", "audio", "audio_semantic")


def bucket_sums(nll: dict[str, torch.Tensor], bucket_steps: int, n_buckets: int) -> dict[str, dict[str, list]]:
    """Per metric, the loss sum and count of values in each time bucket of `bucket_steps` steps
    (`nll`: a conversation's per-value loss, `loss.conversation_nll`)."""
    values = {
        "text": nll["text"][None],
        "text_words": torch.where(nll["words"], nll["text"], torch.nan)[None],
        "audio": nll["audio"],
        "audio_semantic": nll["audio"][:1],
    }
    out = {}
    for metric, v in values.items():
        bucket = (torch.arange(v.shape[-1]) // bucket_steps).expand_as(v)
        keep = ~v.isnan()
        sums = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket[keep], v[keep])
        counts = torch.zeros(n_buckets, dtype=torch.long).index_add_(0, bucket[keep], torch.ones_like(bucket[keep]))
        out[metric] = {"sum": sums.tolist(), "count": counts.tolist()}
    return out


def pooled(per_file: dict[str, dict], n_buckets: int) -> dict[str, dict[str, list]]:
    """Per metric and bucket: the mean loss over every value of every conversation (`per_file`:
    each one's `bucket_sums`), the count, and a 95% bootstrap interval of that mean resampling
    conversations (`eval.intervals`; None below two)."""
    out = {}
    for metric in METRICS:
        per_conversation = [([c[metric]["sum"][i] for c in per_file.values()], [c[metric]["count"][i] for c in per_file.values()]) for i in range(n_buckets)]
        sums, counts = [sum(s) for s, _ in per_conversation], [sum(n) for _, n in per_conversation]
        out[metric] = {
            "loss": [s / n if n else None for s, n in zip(sums, counts)],
            "count": counts,
            "interval": [ratio_interval(s, n) for s, n in per_conversation],
        }
    return out


def paired(per_file: dict[str, dict], baseline: dict[str, dict], n_buckets: int) -> dict[str, dict[str, list]]:
    """Per metric and bucket: the model's pooled mean loss minus the baseline's (`per_file`,
    `baseline`: each conversation's `bucket_sums`, the same conversations), and a 95% interval of
    that difference resampling conversations as pairs (`eval.intervals`; None below two)."""
    out = {}
    for metric in METRICS:
        differences, intervals = [], []
        for i in range(n_buckets):
            sums, counts, base_sums, base_counts = ([files[f][metric][key][i] for f in per_file] for files in (per_file, baseline) for key in ("sum", "count"))
            both = sum(counts) > 0 and sum(base_counts) > 0
            differences.append(sum(sums) / sum(counts) - sum(base_sums) / sum(base_counts) if both else None)
            intervals.append(ratio_difference_interval(sums, counts, base_sums, base_counts))
        out[metric] = {"difference": differences, "interval": intervals}
    return out
