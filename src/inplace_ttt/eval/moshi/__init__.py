"""`ittt moshi-eval`: text and audio loss over long held-out conversations, by time into the
conversation, for several Moshi models in one report with plots.

Each conversation runs through each model whole, as one conversation (positions from 0, fast
weights from the pretrained ones), in pieces of `piece` steps: moshi's streaming state carries
the KV cache (its ring widened to hold a piece, `speech.kv_cache`) and the fast weights from
piece to piece, so the losses are those of one `LMModel.forward` over the whole conversation
(tested), while memory stays bounded by the piece and the model's context, whatever the length.
Conversations longer than the context are the point: attention sees the last `context` steps,
the fast weights everything before.

A separate command from `ittt eval`: that one reads transformers models and token documents;
this one reads Moshi weights (moshi's layout, `save_ttt`'s files) and Mimi codes.

Metrics, nats per value over the positions `LMModel.forward` predicts (values -1 are missing):
``text`` (every text step, padding included), ``text_words`` (steps whose target is a word piece,
not padding), ``audio`` (the model's audio codebooks), ``audio_semantic`` (codebook 0, Mimi's
semantic one). A value at step ``t`` falls in the time bucket of ``t / 12.5`` seconds.

The parts: `models` (the ``--model`` mini-language), `loss` (one conversation's loss per value,
streamed), `buckets` (those losses by time bucket, pooled over conversations), `report`
(``report.md`` and the plot), `run` (the settings and the run).
"""

from .run import MoshiEvalSettings, evaluate_moshi

__all__ = ["MoshiEvalSettings", "evaluate_moshi"]
