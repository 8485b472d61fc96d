"""The codes of a moshi-finetune manifest for `ittt train`: encoded with Mimi on first use, then cached.

A manifest (``{"path": "a.wav", "duration": 24.5}`` lines, a ``.json`` transcript beside each wav)
given as training data is encoded by `encode.Encoder`, the code of ``ittt moshi-encode``, into
``CACHE/<settings>/<audio>.safetensors``: ``<settings>`` a digest of what the codes depend on
besides the audio (Mimi's file content and settings, the tokenizer's content, the model's stream
layout, the speaker label: `encode.fingerprint`), ``<audio>`` a digest of the wav's and its
transcript's path, size and modification time. A rerun (the baseline run on the same data, a
resumed run) finds every file and loads no Mimi; a changed wav or transcript, or another Mimi, is
encoded again under a new name. Files are written atomically, so a killed run leaves none half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .checkpoint import MoshiFiles
from .encode import Conversation, Encoder, EncodeSettings, fingerprint, read_manifest, write_codes
from .loading import lm_streams
from .transcript import MAIN_SPEAKER, transcript_path


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/inplace_ttt/moshi-codes`` (``~/.cache`` without it), as huggingface_hub keeps its own."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inplace_ttt" / "moshi-codes"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _source_key(conversation: Conversation) -> str:
    """The wav and its transcript as they are now: path, size and modification time of each."""

    def stat(path: Path):
        try:
            s = path.stat()
        except OSError:
            return None  # encoding then names what is missing
        return [str(path.resolve()), s.st_size, s.st_mtime_ns]

    return _digest([stat(conversation.audio), stat(transcript_path(conversation.audio))])[:32]


def manifest_codes(
    manifest: str | Path, files: MoshiFiles, cache: str | Path | None = None, device: str = "cpu", main_speaker: str = MAIN_SPEAKER, progress: bool = True
) -> list[Path]:
    """The codes files of every conversation of `manifest`, in its order, encoding with the Mimi and
    tokenizer of `files` those not in `cache` yet (None: `default_cache()`). A bad file raises
    ValueError naming it: training data is all there or the run does not start."""
    from tqdm.auto import tqdm

    if files.mimi is None or files.tokenizer is None:
        raise ValueError("Mimi and the tokenizer (model.mimi and model.tokenizer, or model.hf_repo) encode a manifest of wav files")
    cache = Path(cache) if cache is not None else default_cache()
    conversations = read_manifest(manifest)
    settings = EncodeSettings(Path(manifest), files.mimi, files.tokenizer, cache, files.mimi_config, files.lm_kwargs, main_speaker, device)
    identity = fingerprint(settings, lm_streams(files.lm_kwargs))
    folder = cache / _digest(identity)[:16]
    targets = [folder / f"{_source_key(c)}.safetensors" for c in conversations]
    todo = [(c, t) for c, t in zip(conversations, targets) if not t.is_file()]
    if todo:
        encoder = Encoder(settings)
        for conversation, target in tqdm(todo, desc=f"encoding {Path(manifest).name}", unit="file", disable=not progress, file=sys.stderr):
            try:
                codes, record = encoder.encode(conversation)
            except ValueError as e:
                raise ValueError(f"{manifest}: {conversation.path}: {e}") from None
            write_codes(target, codes, record, encoder.fingerprint)
    return targets
