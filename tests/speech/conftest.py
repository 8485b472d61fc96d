"""Real Moshi parts, small and without download: the files of `ittt moshi-kit` (moshi's own Mimi
with random weights at a small width and k-means-started codebooks, a sentencepiece tokenizer, a
tiny `LMModel`), and stereo conversations spoken by espeak-ng (installed by ``scripts/setup.sh --dev``)."""

import contextlib
import functools
import io
import json
import os
import shutil
import subprocess

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import numpy as np
import pytest
import torch

pytest.importorskip("moshi")
from inplace_ttt.speech import kit as kit_parts  # noqa: E402
from inplace_ttt.speech.kit import LM_KWARGS, mimi_config  # noqa: E402, F401  (the tests' LMModel and Mimi settings: the kit's)

SPEAKER_USER = "SPEAKER_USER"
WORDS = ("hello there how are you doing today I am fine thank you the weather is lovely shall we talk about music or maybe books tell me more please").split()


def random_mimi(seed: int = 0, small: bool = True):
    """moshi's Mimi with random weights and codebooks started by moshi's k-means, as `ittt moshi-kit`
    makes it (`small`: `mimi_config()`, else the published size)."""
    return kit_parts.random_mimi(mimi_config() if small else None, seed=seed)


def need_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        message = "espeak-ng is not installed (scripts/setup.sh --dev installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return exe


@functools.cache
def spoken(word: str) -> np.ndarray:
    """espeak-ng saying `word` (22050 Hz mono float32), its leading and trailing silence cut."""
    import soundfile as sf

    wav = subprocess.run([need_espeak(), "-s", "180", "--stdout", word], check=True, capture_output=True).stdout
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 22050
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[loud[0] : loud[-1] + 1]


def write_conversation(path, duration: float, rate: int, main: list[tuple[str, float]], user: list[tuple[str, float]]) -> list:
    """A stereo file (left: the main speaker's words, right: the user's, each spoken by espeak-ng at
    its start time) and its moshi-finetune transcript beside it; returns the alignments."""
    return kit_parts.write_conversation(path, duration, rate, main, user, voice=spoken, voice_rate=22050)


def dialogue(duration: float, seed: int) -> tuple[list, list]:
    """Turns of a few of `WORDS`: the main speaker and the user alternate, a word every 0.45 s or so."""
    return kit_parts.dialogue(duration, np.random.default_rng(seed), WORDS)


@contextlib.contextmanager
def single_thread():
    """One thread for these tiny models: on a busy 2-core machine two threads make them many times
    slower (OpenMP's synchronisation dominates ops this small; a 3-s moshi-infer took 100 s, not 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    """`ittt moshi-kit`'s files: Mimi weights and settings, tokenizer, tiny LMModel (weights + settings)."""
    root = tmp_path_factory.mktemp("kit")
    with single_thread():
        paths = kit_parts.write_kit(root)
    return {"root": root, **paths, "lm_config": paths["lm_kwargs"]}


def kit_flags(kit) -> list[str]:
    """The command-line flags that hand a Moshi command the kit's Mimi, tokenizer and LM settings."""
    return ["--mimi", str(kit["mimi"]), "--mimi-config", str(kit["mimi_config"]), "--tokenizer", str(kit["tokenizer"]), "--lm-kwargs", str(kit["lm_config"])]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """moshi-finetune's layout: a manifest and three stereo conversations at 22.05, 16 and 24 kHz."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "part").mkdir()
    entries, alignments = [], {}
    for i, (name, duration, rate) in enumerate([("a.wav", 9.0, 22050), ("part/b.wav", 12.3, 16000), ("c.wav", 6.5, 24000)]):
        main, user = dialogue(duration, seed=i)
        alignments[name] = write_conversation(root / name, duration, rate, main, user)
        entries.append({"path": name, "duration": duration})
    (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return {"root": root, "manifest": root / "data.jsonl", "entries": entries, "alignments": alignments}
