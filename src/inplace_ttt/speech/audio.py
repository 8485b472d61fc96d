"""Audio files in and out, block by block so that memory does not grow with a file's length.

soundfile (libsndfile) reads and writes; soxr resamples any rate to Mimi's 24 kHz (its stream
resampler gives the same samples as resampling the whole file at once).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_path, check_regular_file

READ_BLOCK = 1 << 16  # samples per channel read at a time


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    channels: int
    sample_rate: int
    samples: int  # per channel

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """The header of an audio file; an unreadable or missing file raises ValueError naming it."""
    import soundfile as sf

    path = Path(path)
    if not os.path.lexists(path):
        raise ValueError(f"{path}: no such audio file")
    check_regular_file(path, "audio")  # read in blocks, so of any size
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: unreadable audio ({e})") from None
    return AudioInfo(path, info.channels, info.samplerate, info.frames)


def read_resampled(info: AudioInfo, sample_rate: int, channels: list[int]) -> Iterator[np.ndarray]:
    """The chosen `channels` of a file at `sample_rate`, as float32 blocks ``[len(channels), n]``."""
    import soundfile as sf
    import soxr

    stream = None if info.sample_rate == sample_rate else soxr.ResampleStream(info.sample_rate, sample_rate, len(channels), dtype="float32")
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                block = f.read(READ_BLOCK, dtype="float32", always_2d=True)[:, channels]
                last = len(block) < READ_BLOCK or f.tell() >= info.samples
                out = block if stream is None else stream.resample_chunk(block, last=last)
                if len(out):
                    yield np.ascontiguousarray(out.T)
                if last:
                    return
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{info.path}: unreadable audio ({e})") from None


def fixed_blocks(blocks: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Re-cut ``[C, n]`` blocks into blocks of exactly `size` samples, the last one zero-padded;
    each comes with how many of its samples are audio (`size` but for the last)."""
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += block.shape[1]
        if held >= size:
            joined = np.concatenate(pending, axis=1)
            cut = held - held % size
            for piece in np.split(joined[:, :cut], cut // size, axis=1):
                yield piece, size
            pending, held = [joined[:, cut:]], held - cut
    if held:
        rest = np.concatenate(pending, axis=1)
        yield np.pad(rest, ((0, 0), (0, size - held))), held


@contextmanager
def wav_writer(path: str | Path, sample_rate: int) -> Iterator[Callable[[np.ndarray], None]]:
    """`write(samples)` appends mono float samples to a WAV file that appears at `path` only
    once the block exits cleanly (32-bit float: nothing clipped or rounded)."""
    import soundfile as sf

    with atomic_path(path) as tmp, sf.SoundFile(str(tmp), "w", samplerate=sample_rate, channels=1, format="WAV", subtype="FLOAT") as f:
        yield f.write
