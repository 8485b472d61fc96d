"""Moshi's files found the way moshi's own loaders find them (`moshi.models.loaders.CheckpointInfo`).

A Hugging Face repo id (``kyutai/moshiko-pytorch-bf16``) is read through huggingface_hub's cache, so
it works offline once cached (``HF_HUB_OFFLINE=1`` skips the network); its ``config.json`` names the
weights, Mimi and tokenizer files and holds the `LMModel` keyword arguments. Each file may instead be
given: a local path, or ``hf://org/repo/file`` (moshi's `hf_get`). The `LMModel` settings are a
mapping given inline, or a JSON file: bare keyword arguments or moshi's ``config.json``.
moshi-finetune's ``moshi_paths`` section calls the same `CheckpointInfo.from_hf_repo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loading import read_json


@dataclass(frozen=True)
class MoshiFiles:
    """The files of a Moshi model, resolved: Mimi and the tokenizer only matter to audio."""

    weights: Path
    lm_kwargs: dict[str, Any] | None  # None: Moshi 7B's (moshi's defaults)
    mimi: Path | None = None
    mimi_config: dict[str, Any] | None = None  # None: the published Mimi's
    tokenizer: Path | None = None


def resolve_moshi_files(
    hf_repo: str | None,
    weights: str | None,
    lm_kwargs: dict | str | None,
    mimi: str | None = None,
    tokenizer: str | None = None,
    mimi_config: dict | str | None = None,
    where: str = "model",
) -> MoshiFiles:
    """The files of a Moshi model as `CheckpointInfo.from_hf_repo` finds them: each given one as it is
    (a path, or ``hf://org/repo/file``), the others from `hf_repo`'s ``config.json`` (or moshi's
    default names). `lm_kwargs`: a mapping (the `LMModel` keyword arguments), a JSON file of them or
    moshi's ``config.json``, or None (the repo's, else Moshi 7B's). Errors name `where`'s keys."""
    from huggingface_hub.errors import EntryNotFoundError
    from moshi.models.loaders import CheckpointInfo, hf_get

    config_file = lm_kwargs if isinstance(lm_kwargs, str) else None
    mimi_settings = mimi_config if isinstance(mimi_config, dict) else read_json(mimi_config, f"{where}.mimi_config")
    if not weights and hf_repo is None:
        raise ValueError(f"{where}.weights: give moshi's model.safetensors, or {where}.hf_repo (a Hugging Face repo id)")
    try:
        if hf_repo is None and config_file is None:  # nothing to look up in a config.json
            return MoshiFiles(
                Path(hf_get(weights)), lm_kwargs, Path(hf_get(mimi)) if mimi else None, mimi_settings, Path(hf_get(tokenizer)) if tokenizer else None
            )
        info = CheckpointInfo.from_hf_repo(hf_repo, moshi_weights=weights or None, mimi_weights=mimi, tokenizer=tokenizer, config_path=config_file)
    except (OSError, ValueError, EntryNotFoundError) as e:  # not cached while offline, no such repo or file, no network; a config that is not JSON
        what = f"{where}.hf_repo {hf_repo!r}" if hf_repo else f"{where}.lm_kwargs {config_file}" if config_file else f"{where}.weights {weights}"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what}: cannot resolve the model's files ({first}); offline, a repo must be in huggingface_hub's cache (HF_HUB_CACHE)") from None
    return MoshiFiles(
        info.moshi_weights,
        dict(lm_kwargs) if isinstance(lm_kwargs, dict) else info.lm_config,
        info.mimi_weights if mimi or hf_repo else None,  # without a repo, moshi names a file that is not there
        mimi_settings if mimi_config is not None else info.mimi_config,
        info.tokenizer if tokenizer or hf_repo else None,
    )
