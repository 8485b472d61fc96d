"""Moshi's parts from local files, through moshi's own loaders, with errors that name the file.

Weights are read from safetensors only: moshi's loaders fall back to `torch.load` (a pickle) for
other suffixes, which must never see a user's file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..families.moshi import SAFETENSORS


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`"auto"` device: cuda if available; `"auto"` dtype: bfloat16 on cuda, float32 elsewhere."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    return dev, getattr(torch, dtype)


def safetensors_file(path: str | Path, what: str) -> str:
    """`path` as a string, if it is an existing safetensors file (else ValueError naming `what`)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: no such file: {p}")
    if p.suffix not in SAFETENSORS:
        raise ValueError(f"{what}: {p} is not a safetensors file ({', '.join(SAFETENSORS)}); other formats are pickles, which are never loaded")
    return str(p)


def read_json(path: str | Path | None, what: str) -> dict[str, Any] | None:
    """A JSON object from a file (None stays None: moshi's defaults)."""
    if path is None:
        return None
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {p} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {p} must hold a JSON object of keyword arguments")
    return data


@dataclass(frozen=True)
class Streams:
    """How an `LMModel` lays out its streams: text, then ``dep_q`` codebooks of Moshi's audio, then the user's."""

    text_card: int
    card: int
    dep_q: int
    n_q: int
    text_padding: int  # LMModel.text_padding_token_id
    end_of_padding: int  # LMModel.end_of_text_padding_id

    @classmethod
    def of(cls, lm) -> Streams:
        return cls(lm.text_card, lm.card, lm.dep_q, lm.n_q, lm.text_padding_token_id, lm.end_of_text_padding_id)

    @property
    def user_q(self) -> int:
        return self.n_q - self.dep_q

    @property
    def mimi_codebooks(self) -> int:
        return max(self.dep_q, self.user_q)  # as moshi's CheckpointInfo.get_mimi


def meta_lm(lm_kwargs: dict | None):
    """The LMModel `lm_kwargs` describe (None: Moshi 7B), moshi's own built on the meta device:
    its layout and settings, without memory or weights."""
    from ..families.moshi import LMLoadError, moshi_lm

    try:
        return moshi_lm(None, lm_kwargs, device="meta")
    except LMLoadError as e:
        raise ValueError(f"--lm-kwargs: not LMModel settings ({e})") from None


def lm_streams(lm_kwargs: dict | None) -> Streams:
    """The stream layout of the LMModel `lm_kwargs` describe (None: Moshi 7B)."""
    return Streams.of(meta_lm(lm_kwargs))


def load_inference_lm(
    weights: str | Path,
    lm_kwargs: dict | None = None,
    *,
    ttt: str | Path | None = None,
    clip_tau: float | None = ...,
    rope_scaling: dict | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """A Moshi LM for inference: with `ttt` (a ``ttt.safetensors`` from `save_ttt`) the In-Place
    TTT model, without it the plain model, both through moshi's `get_moshi_lm`."""
    from ..families.moshi import LMLoadError, load_base, load_moshi

    weights = safetensors_file(weights, "model weights")
    try:
        if ttt is None:
            if rope_scaling is not None or clip_tau not in (None, ...):
                raise ValueError("rope_scaling and clip_tau need an In-Place TTT model: give its ttt.safetensors")
            lm = load_base(weights, lm_kwargs, device=device, dtype=dtype)
        else:
            lm = load_moshi(
                weights, lm_kwargs, ttt_file=safetensors_file(ttt, "TTT weights"), clip_tau=clip_tau, rope_scaling=rope_scaling, device=device, dtype=dtype
            )
    except LMLoadError as e:
        settings = "these --lm-kwargs" if lm_kwargs is not None else "Moshi 7B's settings (give the model's --lm-kwargs)"
        raise ValueError(f"{weights} does not load with {settings}: {e}") from None
    return lm.eval()


def load_mimi(path: str | Path, mimi_config: dict | None, num_codebooks: int, device: str | torch.device = "cpu"):
    """Mimi through moshi's `get_mimi` (`mimi_config` None: the published Mimi's settings)."""
    from moshi.models.loaders import get_mimi

    path = safetensors_file(path, "Mimi weights")
    try:
        mimi = get_mimi(path, mimi_config, device=device, num_codebooks=num_codebooks)
    except RuntimeError as e:
        if "state_dict" not in str(e):
            raise
        raise ValueError(f"{path} does not fit the Mimi settings (give its --mimi-config): {str(e)[:300]}") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"--mimi-config: not Mimi settings ({e})") from None
    return mimi.eval()


def load_tokenizer(path: str | Path, text_card: int):
    """moshi's text tokenizer (sentencepiece), checked to fit the model's text vocabulary."""
    import sentencepiece

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"tokenizer: no such file: {p}")
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(p))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"tokenizer: {p} is not a sentencepiece model ({e})") from None
    if tokenizer.vocab_size() > text_card:
        raise ValueError(f"tokenizer: {p} has {tokenizer.vocab_size()} pieces, more than the model's text vocabulary ({text_card})")
    return tokenizer


def load_player(settings, command: str):
    """What plays a conversation step by step, from a command's settings (`weights`, `ttt`,
    `lm_kwargs`, `clip_tau`, `mimi`, `mimi_config`, `tokenizer`, `device`, `dtype`): `(lm, streams,
    mimi, tokenizer, device)`, the LM with TTT when `settings.ttt` is given, Mimi checked to fit it,
    the tokenizer None without one. Unconditioned models only (`command` names who refuses)."""
    device, dtype = resolve_device(settings.device, settings.dtype)
    lm = load_inference_lm(
        settings.weights, settings.lm_kwargs, ttt=settings.ttt, clip_tau=... if settings.clip_tau is None else settings.clip_tau, device=device, dtype=dtype
    )
    if lm.fuser is not None:
        raise ValueError(f"{settings.weights}: a conditioned LMModel (condition fuser); {command} plays unconditioned models only")
    streams = Streams.of(lm)
    mimi = load_mimi(settings.mimi, settings.mimi_config, streams.mimi_codebooks, device)
    if mimi.cardinality != streams.card:
        raise ValueError(f"Mimi weights: {settings.mimi} has {mimi.cardinality} codes per codebook; the model reads {streams.card}")
    tokenizer = None if settings.tokenizer is None else load_tokenizer(settings.tokenizer, streams.text_card)
    return lm, streams, mimi, tokenizer, device
