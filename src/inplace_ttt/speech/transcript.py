"""Word alignments (moshi-finetune's ``a.json`` beside ``a.wav``) and Moshi's text stream.

The transcript format is what moshi-finetune's ``annotate.py`` writes:
``{"alignments": [[word, [start_s, end_s], speaker], ...]}``, the main speaker (Moshi, the left
channel) labelled ``SPEAKER_MAIN``.

`text_stream` lays the words out as Moshi's text stream, following moshi-finetune's
``finetune/data/interleaver.py`` (``Interleaver.build_token_stream`` and ``prepare_item``, with
the settings its ``train.py`` uses: ``keep_main_only=True``, no ``keep_and_shift``, no audio
delay, in-word padding = text padding):

- one stream value per Mimi frame (12.5 Hz), ``ceil(duration * 12.5)`` of them, text padding
  (`LMModel.text_padding_token_id`, ``existing_text_padding_id`` = 3 in Moshi 7B) where no word is;
- only the main speaker's words; words sorted by start; words of zero or negative duration
  dropped by moshi-finetune (we refuse negative durations as a broken transcript, and drop zero
  ones as it does); each word tokenized alone (``word.strip()``, no BOS);
- a word's first token goes at the first frame ``t`` with ``start * 12.5 < t + 1``, i.e.
  ``floor(start * 12.5)``, its other tokens on the following frames, one per frame;
- the frame just before a word's first token, if it holds padding, becomes the end-of-padding
  token (`LMModel.end_of_text_padding_id`, ``existing_text_end_padding_id`` = 0 in Moshi 7B);
- a word that starts while the previous word's tokens are still being laid out replaces them
  (the rest of the previous word is cut, as moshi-finetune does).

The model's delays (text and audio codebooks shifted against each other) are not applied here:
`LMModel.forward` and `LMGen` apply them, so the codes files hold time-aligned streams.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..files import GiB, check_regular_file

FRAME_RATE = 12.5  # Mimi frames (Moshi steps) per second
MAIN_SPEAKER = "SPEAKER_MAIN"
LATE_TOLERANCE = 1 / FRAME_RATE  # a word may end up to one frame after the audio (alignment rounding)
TRANSCRIPT_FILE_LIMIT = GiB // 4  # word alignments: a few kB per minute of speech


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    speaker: str


@dataclass
class StreamStats:
    words: int = 0  # main-speaker words laid out
    zero_duration: int = 0  # dropped, as moshi-finetune drops them
    cut_tokens: int = 0  # tokens of a word replaced by the next word before they were laid out


def transcript_path(audio: Path) -> Path:
    return audio.with_suffix(".json")


def read_alignments(path: Path, duration: float) -> list[Word]:
    """The words of a transcript file, checked: each ``[word, [start, end], speaker]`` with
    ``0 <= start <= end <= duration`` (plus one frame of rounding)."""
    if not os.path.lexists(path):
        raise ValueError(f"{path}: no transcript (moshi-finetune's word alignments, beside the audio)")
    check_regular_file(path, "transcript", TRANSCRIPT_FILE_LIMIT, ": a conversation's word alignments are far smaller")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("alignments"), list):
        raise ValueError(f'{path}: expected {{"alignments": [[word, [start_s, end_s], speaker], ...]}}')
    words = []
    for i, entry in enumerate(data["alignments"]):
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[2], str)
            and isinstance(entry[1], list)
            and len(entry[1]) == 2
            and all(_is_number(x) for x in entry[1])
        ):
            raise ValueError(f"{path}: alignments[{i}] is {json.dumps(entry)[:80]}; expected [word, [start_s, end_s], speaker]")
        word = Word(entry[0], float(entry[1][0]), float(entry[1][1]), entry[2])
        if word.start < 0 or word.end < word.start:
            raise ValueError(f"{path}: alignments[{i}] ({word.text!r}) has start {word.start} s and end {word.end} s; a word needs 0 <= start <= end")
        if word.end > duration + LATE_TOLERANCE:
            raise ValueError(f"{path}: alignments[{i}] ({word.text!r}) ends at {word.end} s, past the end of the audio ({duration:.3f} s)")
        words.append(word)
    return words


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def text_stream(words: list[Word], frames: int, tokenize, padding: int, end_of_padding: int, main_speaker: str = MAIN_SPEAKER) -> tuple[list[int], StreamStats]:
    """Moshi's text stream of `frames` steps for the main speaker's `words` (see the module
    docstring for the conventions); `tokenize(text) -> list[int]`."""
    stats = StreamStats()
    main = sorted((w for w in words if w.speaker == main_speaker), key=lambda w: w.start)
    kept = [w for w in main if w.start < w.end]
    stats.zero_duration = len(main) - len(kept)
    stream = [padding] * frames
    pending: list[int] = []
    i = 0
    for t in range(frames):
        while i < len(kept) and kept[i].start * FRAME_RATE < t + 1:
            stats.cut_tokens += len(pending)
            pending = list(tokenize(kept[i].text.strip()))
            stats.words += 1
            i += 1
        if pending:
            if t > 0 and stream[t - 1] == padding:
                stream[t - 1] = end_of_padding
            stream[t] = pending.pop(0)
    stats.cut_tokens += len(pending)
    return stream, stats
