"""The loss of each value of one conversation, the conversation streamed through the model in pieces."""

from __future__ import annotations

import torch

from ...speech.kv_cache import widen_kv_caches


def conversation_nll(lm, codes: torch.Tensor, piece: int) -> dict[str, torch.Tensor]:
    """Per-value loss of one conversation ``codes [K, T]``: ``text [T]``, ``audio [dep_q, T]``
    (float64, NaN where nothing is predicted) and ``words [T]`` (the text target is a word piece)."""
    if lm.fuser is not None:
        raise ValueError("moshi-eval reads unconditioned models only (this LMModel has a condition fuser)")
    T = codes.shape[1]
    device = next(lm.parameters()).device
    delayed = delayed_input(lm, codes.to(device))[None]
    steps = torch.full((1 + lm.dep_q, T), float("nan"), dtype=torch.float64)  # loss at each step, delayed time
    with torch.no_grad(), lm.streaming(1):
        widen_kv_caches(lm, piece)
        for a in range(0, T, piece):
            b = min(T, a + piece)
            out, text_logits = lm.forward_text(delayed[:, :, a:b])
            target = delayed[:, :, a + 1 : b + 1]
            audio_logits = lm.forward_depformer_training(target, out)
            steps[0, a:b] = _nll(text_logits[0, 0], target[0, 0])
            for k in range(lm.dep_q):
                steps[1 + k, a:b] = _nll(audio_logits[0, k], target[0, lm.audio_offset + k])
    values = undelayed(steps, lm.delays[: 1 + lm.dep_q])  # back to the codes' time, NaN past the end
    values[codes[: 1 + lm.dep_q].cpu() == lm.zero_token_id] = float("nan")  # missing values: no loss
    text_target = codes[0].cpu()
    words = (text_target != lm.text_padding_token_id) & (text_target != lm.end_of_text_padding_id) & ~values[0].isnan()
    return {"text": values[0], "audio": values[1:], "words": words}


# `LMModel.forward`'s own shifting is private to moshi (`lm_utils._delay_sequence`,
# `_undelay_sequence`, `LMModel._get_initial_token`): these two redo it over the model's public
# attributes, so that a moshi release may rename its helpers without breaking this evaluation.


def delayed_input(lm, codes: torch.Tensor) -> torch.Tensor:
    """The input `LMModel.forward` builds from ``codes [K, T]``: ``[K, 1 + T]``, each stream moved
    right by its delay behind one initial step, the initial token (text's or audio's) before it starts."""
    K, T = codes.shape
    delayed = torch.full((K, 1 + T), lm.initial_token_id, dtype=torch.long, device=codes.device)
    delayed[0] = lm.text_initial_token_id
    for k, delay in enumerate(lm.delays):
        delayed[k, 1 + delay :] = codes[k, : max(0, T - delay)]
    return delayed


def undelayed(steps: torch.Tensor, delays: list[int]) -> torch.Tensor:
    """Per-stream values ``[K, T]`` at delayed time moved back to the codes' time (stream k by
    ``delays[k]`` steps to the left), NaN where the delay leaves nothing."""
    values = torch.full_like(steps, float("nan"))
    T = steps.shape[1]
    for k, delay in enumerate(delays):
        values[k, : max(0, T - delay)] = steps[k, delay:]
    return values


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log p(target)`` per row of ``logits [P, V]``; NaN where the target is not a value (initial or missing)."""
    V = logits.shape[-1]
    valid = (target >= 0) & (target < V)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp(0, V - 1)[:, None])[:, 0]
    return torch.where(valid, -logp, torch.nan).double().cpu()
