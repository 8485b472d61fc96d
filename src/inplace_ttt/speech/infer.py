"""`ittt moshi-infer`: a user's recording played through Moshi (with In-Place TTT), Moshi's side out.

The loop is moshi's own ``run_inference.py``'s: the user's audio at 24 kHz cut into Mimi frames
(80 ms), each encoded by Mimi in streaming mode and given to `LMGen.step`, the first frame twice
(LMGen's first step reads its initial tokens, not the input); a step's text token and audio codes
come out ``max(delays)`` steps later, the audio decoded by the same streaming Mimi. Frames of
silence follow the input until every input frame has its output frame, so the audio out has the
input's length (at 24 kHz). The text goes to a transcript, one word per line with its start and
end in seconds of the output.

Memory is bounded whatever the input's length: audio is read and written block by block, LMGen's
KV cache is a ring of the model's `context` steps, the fast weights are a fixed-size state
(`FixedStepState`), and per-step times take 4 bytes a step (90 KB for 30 minutes). On a GPU,
LMGen and Mimi capture their steps in CUDA graphs (moshi does this by itself; the TTT layers run
inside the graph): that path is moshi's and the adapter's, not exercised by this project's tests
(no GPU here).
"""

from __future__ import annotations

import array
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, write_atomic
from .audio import audio_info, fixed_blocks, read_resampled, wav_writer
from .loading import Streams, load_player
from .transcript import FRAME_RATE

CHANNELS = {"left": 0, "right": 1}


@dataclass
class InferSettings:
    input: Path
    output: Path
    weights: Path
    mimi: Path
    ttt: Path | None = None  # None: the plain model
    tokenizer: Path | None = None  # None: the transcript holds token ids
    lm_kwargs: dict | None = None  # None: Moshi 7B
    mimi_config: dict | None = None  # None: the published Mimi's
    channel: str | None = None  # of a stereo input: "left" or "right"
    clip_tau: float | None = None  # None: the saved setting
    device: str = "auto"  # "auto": cuda if available
    dtype: str = "auto"  # "auto": bfloat16 on cuda, float32 on cpu
    seed: int = 0
    greedy: bool = False
    temp: float = 0.8  # LMGen's defaults
    temp_text: float = 0.7

    def __post_init__(self) -> None:
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValueError(f"--channel must be one of {sorted(CHANNELS)}; got {self.channel!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")


class Transcript:
    """Text tokens to words with their times: a word starts at a piece beginning with "▁" and ends
    at the next padding (sentencepiece's word marks; padding ids are the model's)."""

    def __init__(self, write, streams: Streams, tokenizer=None):
        self.write, self.tokenizer = write, tokenizer
        self.silent = {streams.text_padding, streams.end_of_padding}
        self.word: list[str] = []
        self.start = self.end = 0.0
        self.words = 0

    def add(self, token: int, frame: int) -> None:
        t = frame / FRAME_RATE
        piece = self._piece(token)
        if piece is None:
            return self.flush()
        if self.tokenizer is None or piece.startswith("▁"):
            self.flush()
        if not self.word:
            self.start = t
        self.word.append(piece)
        self.end = t + 1 / FRAME_RATE

    def _piece(self, token: int) -> str | None:
        if token in self.silent:
            return None
        tok = self.tokenizer
        if tok is None:
            return f"<{token}>"
        if token >= tok.vocab_size():
            return f"<{token}>"
        if tok.is_control(token):
            return None
        return tok.id_to_piece(token)

    def flush(self) -> None:
        if self.word:
            text = "".join(self.word).replace("▁", " ").strip() or "".join(self.word)
            self.write(f"{self.start:.2f}\t{self.end:.2f}\t{text}\n")
            self.words += 1
            self.word = []


@contextmanager
def _text_file(path: Path) -> Iterator:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yield f.write


def _ms_summary(seconds: array.array) -> dict:
    ms = sorted(1000 * s for s in seconds)
    if not ms:
        return {}
    return {"mean": statistics.fmean(ms), "median": statistics.median(ms), "p90": ms[int(0.9 * (len(ms) - 1))], "max": ms[-1]}


def run_inference(settings: InferSettings, progress: bool = True) -> dict:
    """Stream `settings.input` through the model; write the audio, the transcript and a report
    (``OUT.wav``, ``OUT.txt``, ``OUT.json``); returns the report."""
    from moshi.models.lm import LMGen
    from tqdm.auto import tqdm

    from ..families.moshi import ttt_layers, update_counts

    info = audio_info(settings.input)
    if info.samples == 0:
        raise ValueError(f"{info.path} holds no audio")
    if info.channels == 1:
        channel = 0
    elif info.channels == 2 and settings.channel is not None:
        channel = CHANNELS[settings.channel]
    else:
        hint = " (moshi-finetune's conversations have the user on the right)" if info.channels == 2 else ""
        raise ValueError(f"{info.path} has {info.channels} channels: choose the user's with --channel left|right{hint}")
    out = Path(settings.output)
    if out.suffix.lower() != ".wav":
        raise ValueError(f"output: {out} must be a .wav file")
    if not out.parent.is_dir():
        raise ValueError(f"output: no such folder: {out.parent}")
    lm, streams, mimi, tokenizer, device = load_player(settings, "moshi-infer")
    gen = LMGen(lm, use_sampling=not settings.greedy, temp=settings.temp, temp_text=settings.temp_text)
    rate, size = mimi.sample_rate, mimi.frame_size
    samples_in = 0

    def frames() -> Iterator[tuple[np.ndarray, bool]]:
        nonlocal samples_in
        for block, valid in fixed_blocks(read_resampled(info, rate, [channel]), size):
            samples_in += valid
            yield block, True
        while True:
            yield np.zeros((1, size), dtype=np.float32), False

    torch.manual_seed(settings.seed)
    step_s, frame_s = array.array("f"), array.array("f")
    expected = -(-round(info.samples * rate / info.sample_rate) // size)
    produced = consumed = steps = 0
    pending: np.ndarray | None = None  # the last output frame, cut to the input's length at the end
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        write_audio = stack.enter_context(wav_writer(out, rate))
        transcript = Transcript(stack.enter_context(_text_file(out.with_suffix(".txt"))), streams, tokenizer)
        stack.enter_context(mimi.streaming(1))
        stack.enter_context(gen.streaming(1))
        bar = stack.enter_context(tqdm(total=expected, desc="moshi-infer", unit="frame", disable=not progress))
        for pcm, real in frames():
            if not real and produced >= consumed:
                break
            consumed += real
            t0 = time.perf_counter()
            codes = mimi.encode(torch.from_numpy(pcm)[None].to(device))
            t1 = time.perf_counter()
            if produced == 0 and consumed == 1:
                gen.step(codes)  # as moshi's run_inference: the first step's input is replaced by the initial tokens
                steps += 1
            tokens = gen.step(codes)
            steps += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_s.append(time.perf_counter() - t1)
            if tokens is not None:
                if pending is not None:
                    write_audio(pending)
                pending = mimi.decode(tokens[:, 1:]).float().cpu().numpy()[0, 0]
                transcript.add(int(tokens[0, 0]), produced)
                produced += 1
                bar.update(1)
            frame_s.append(time.perf_counter() - t0)
        if pending is not None:
            write_audio(pending[: samples_in - (produced - 1) * size])
        transcript.flush()
        updates = {str(i): int(c[0]) for i, c in update_counts(lm).items()}
    wall = time.perf_counter() - start
    audio_seconds = samples_in / rate
    report = {
        "input": str(settings.input),
        "output": str(out),
        "transcript": str(out.with_suffix(".txt")),
        "audio_seconds": audio_seconds,
        "frames": produced,
        "steps": steps,
        "words": transcript.words,
        "wall_seconds": wall,
        "real_time_factor": wall / audio_seconds if audio_seconds else None,
        "step_ms": _ms_summary(step_s),
        "frame_ms": _ms_summary(frame_s),
        "ttt_layers": [i for i, _ in ttt_layers(lm)],
        "updates": updates,
        "device": str(device),
        "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
        "seed": settings.seed,
        "greedy": settings.greedy,
    }
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    return report
