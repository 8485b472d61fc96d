"""`ittt moshi-encode`: moshi-finetune's conversations turned into the codes files `ittt train` reads.

In: moshi-finetune's dataset as it is, a JSONL manifest of ``{"path": "a.wav", "duration": 24.5}``
lines (paths relative to the manifest), each file stereo (left channel the main speaker, Moshi;
right the user), with ``a.json`` word alignments beside it (`transcript`).
Out: ``DIR/<path>.safetensors`` per conversation holding ``codes`` ``[K, T]`` (int32, 12.5 Hz):
the text stream (`transcript.text_stream`), Mimi's codes of the left channel (the model's
``dep_q`` codebooks), then of the right (the user's ``n_q - dep_q``): the order of moshi-finetune's
``InterleavedTokenizer`` (``mimi.encode`` of ``[2, 1, samples]`` viewed as ``[1, 2 Q, T]``, text first).

Encoding is also done on the fly by `ittt train` for a manifest in its data (`codes_cache`: once,
then cached); as a step of its own it keeps Mimi out of the training process and writes the codes
where the user wants them.
Both channels are streamed through Mimi in blocks (`kv_cache.widen_kv_caches`: the codes of a
one-shot encode, with memory bounded whatever the file's length).

A rerun skips the files already written with the same settings; a bad file is reported by name
and skipped; every file is written atomically (a crash leaves none half-written).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import torch

from ..families.moshi.codes import CODES_KEY
from ..files import GiB, atomic_path, check_regular_file
from .audio import AudioInfo, audio_info, fixed_blocks, read_resampled
from .kv_cache import widen_kv_caches
from .loading import Streams, lm_streams, load_mimi, load_tokenizer
from .transcript import MAIN_SPEAKER, read_alignments, text_stream, transcript_path

METADATA_KEY = "inplace_ttt_encode"
DURATION_TOLERANCE = 1.0  # seconds the manifest's duration may differ from the file's
MANIFEST_FILE_LIMIT = GiB  # a line per conversation: millions of them fit


@dataclass(frozen=True)
class Conversation:
    path: str  # as written in the manifest
    audio: Path
    duration: float


def read_manifest(manifest: str | Path) -> list[Conversation]:
    """The conversations of a moshi-finetune manifest (a regular file of at most
    `MANIFEST_FILE_LIMIT` bytes); a malformed line raises naming it."""
    manifest = Path(manifest)
    check_regular_file(manifest, "manifest", MANIFEST_FILE_LIMIT, ": split it into several manifests")
    conversations, seen = [], set()
    for i, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{manifest}:{i}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f'{where}: expected {{"path": "a.wav", "duration": 24.5}}; got {line[:80]}')
        duration = entry.get("duration")
        if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration >= 0:
            raise ValueError(f"{where}: 'duration' must be a number of seconds >= 0; got {duration!r}")
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"{where}: path {entry['path']!r} must be relative to the manifest's folder, inside it")
        if entry["path"] in seen:
            raise ValueError(f"{where}: {entry['path']} is listed twice")
        seen.add(entry["path"])
        conversations.append(Conversation(entry["path"], manifest.parent / rel, float(duration)))
    if not conversations:
        raise ValueError(f"manifest: {manifest} holds no conversations")
    return conversations


def codes_path(out: Path, conversation: Conversation) -> Path:
    return out / PurePosixPath(conversation.path).with_suffix(".safetensors")


@dataclass
class EncodeSettings:
    manifest: Path
    mimi: Path
    tokenizer: Path
    out: Path
    mimi_config: dict | None = None  # None: the published Mimi's (moshi's loaders)
    lm_kwargs: dict | None = None  # the LMModel the codes are for; None: Moshi 7B
    main_speaker: str = MAIN_SPEAKER
    device: str = "cpu"
    block_frames: int = 125  # Mimi frames per encoder call (10 s)


@dataclass
class EncodeSummary:
    encoded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # done by an earlier run with the same settings
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    audio_seconds: float = 0.0  # encoded by this run
    wall_seconds: float = 0.0


class Encoder:
    """Mimi, the tokenizer and the model's stream layout: turns one conversation into codes."""

    def __init__(self, settings: EncodeSettings):
        self.settings = settings
        self.streams: Streams = lm_streams(settings.lm_kwargs)
        self.mimi = load_mimi(settings.mimi, settings.mimi_config, self.streams.mimi_codebooks, settings.device)
        if self.mimi.cardinality != self.streams.card:
            raise ValueError(f"Mimi weights: {settings.mimi} has {self.mimi.cardinality} codes per codebook; the model reads {self.streams.card}")
        self.tokenizer = load_tokenizer(settings.tokenizer, self.streams.text_card)
        self.fingerprint = fingerprint(settings, self.streams)

    def audio_codes(self, info: AudioInfo) -> torch.Tensor:
        """Mimi's codes ``[2, Q, frames]`` of both channels (the channels are the batch)."""
        mimi, rate = self.mimi, self.mimi.sample_rate
        pieces, samples = [], 0
        with torch.no_grad(), mimi.streaming(2):
            widen_kv_caches(mimi, 2 * self.settings.block_frames)  # Mimi's transformers run at 2 steps per frame
            for block, valid in fixed_blocks(read_resampled(info, rate, [0, 1]), mimi.frame_size * self.settings.block_frames):
                pieces.append(mimi.encode(torch.from_numpy(block)[:, None].to(self.settings.device)).cpu())
                samples += valid
        frames = -(-samples // mimi.frame_size)
        return torch.cat(pieces, -1)[..., :frames] if pieces else torch.zeros(2, self.streams.mimi_codebooks, 0, dtype=torch.long)

    def encode(self, conversation: Conversation) -> tuple[torch.Tensor, dict]:
        """``codes [K, T]`` (int32) and what to record about them."""
        info = audio_info(conversation.audio)
        if info.samples == 0:
            raise ValueError(f"{info.path} holds no audio")
        if info.channels != 2:
            raise ValueError(f"{info.path}: {info.channels} channel(s); a conversation is stereo: left the main speaker (Moshi), right the user")
        if abs(info.duration - conversation.duration) > DURATION_TOLERANCE:
            raise ValueError(f"{info.path}: the manifest says {conversation.duration} s but the file holds {info.duration:.3f} s")
        words = read_alignments(transcript_path(info.path), info.duration)
        audio = self.audio_codes(info)
        s = self.streams
        text, stats = text_stream(words, audio.shape[-1], self.tokenizer.encode, s.text_padding, s.end_of_padding, self.settings.main_speaker)
        codes = torch.cat([torch.tensor(text)[None], audio[0, : s.dep_q], audio[1, : s.user_q]]).to(torch.int32)
        record = {"source": conversation.path, "duration": info.duration, "sample_rate": info.sample_rate, "frames": codes.shape[1], **asdict(stats)}
        return codes, record

    def done(self, path: Path) -> bool:
        """Whether `path` holds codes from this encoder's settings (a file from other settings raises)."""
        from safetensors import SafetensorError, safe_open

        if not path.exists():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                saved = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}")).get("settings")
        except (SafetensorError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a codes file ({e}); remove it or choose another --out") from None
        if saved != self.fingerprint:
            raise ValueError(f"{path} was encoded with other settings (Mimi, tokenizer, model or speaker); remove it or choose another --out")
        return True


def fingerprint(settings: EncodeSettings, streams: Streams) -> dict:
    """What the codes depend on besides the audio: Mimi (its file's content and settings), the
    tokenizer, the model's stream layout and the main speaker's label."""
    return {
        "mimi_sha256": _sha256(settings.mimi),
        "mimi_config": settings.mimi_config,
        "tokenizer_sha256": _sha256(settings.tokenizer),
        "streams": asdict(streams),
        "main_speaker": settings.main_speaker,
    }


def write_codes(target: Path, codes: torch.Tensor, record: dict, settings_fingerprint: dict) -> None:
    """A codes file, atomically, its metadata holding `record` and the settings' fingerprint."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file({CODES_KEY: codes}, str(tmp), metadata={METADATA_KEY: json.dumps({**record, "settings": settings_fingerprint})})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_manifest(settings: EncodeSettings, progress: bool = True) -> EncodeSummary:
    """Encode every conversation of the manifest not done yet; each bad file gets a line on stderr."""
    from tqdm.auto import tqdm

    conversations = read_manifest(settings.manifest)
    encoder = Encoder(settings)
    summary = EncodeSummary()
    start = time.perf_counter()
    bar = tqdm(conversations, desc="moshi-encode", unit="file", disable=not progress)
    for conversation in bar:
        target = codes_path(settings.out, conversation)
        try:
            if encoder.done(target):
                summary.skipped.append(conversation.path)
                continue
            codes, record = encoder.encode(conversation)
        except ValueError as e:
            summary.failed.append((conversation.path, str(e)))
            tqdm.write(f"moshi-encode: skipped {conversation.path}: {e}", file=sys.stderr)
            continue
        write_codes(target, codes, record, encoder.fingerprint)
        summary.encoded.append(conversation.path)
        summary.audio_seconds += record["duration"]
    summary.wall_seconds = time.perf_counter() - start
    return summary
