"""Real Moshi parts, small and without download: moshi's own Mimi (built by `loaders.get_mimi`
with random weights, at a small width), a sentencepiece tokenizer trained here, a tiny
`LMModel`, and stereo conversations spoken by espeak-ng (installed by ``scripts/setup.sh --dev``)."""

import contextlib
import copy
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
from tests.tiny_moshi import TINY  # noqa: E402

SPEAKER_USER = "SPEAKER_USER"
LM_KWARGS = {**TINY, "card": 64, "text_card": 64}
WORDS = ("hello there how are you doing today I am fine thank you the weather is lovely shall we talk about music or maybe books tell me more please").split()


def mimi_config() -> dict:
    """Mimi's architecture at a small width: 24 kHz in, 12.5 frames per second, 8 codebooks of 64 codes."""
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    cfg["seanet"].update(n_filters=4, dimension=32)
    cfg["quantizer"].update(dimension=16, n_q=8, bins=64, input_dimension=32, output_dimension=32)
    cfg["transformer"].update(d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32, output_dimensions=[32])
    return cfg


def random_mimi(seed: int = 0, small: bool = True):
    """moshi's Mimi with random weights (`small`: `mimi_config()`, else the published size). moshi starts
    its codebooks at zero, which maps every frame to code 0; forwards in training mode on spoken
    words let moshi's own k-means initialise them (each codebook the first time quantizer
    dropout reaches it), so that codes follow the audio."""
    import random

    import soxr
    from moshi.models import loaders

    torch.manual_seed(seed)
    random.seed(seed)
    mimi = loaders.get_mimi(None, mimi_config() if small else None, num_codebooks=8)
    speech = soxr.resample(np.concatenate([spoken(w) for w in WORDS]), 22050, mimi.sample_rate)
    speech = torch.from_numpy(speech[: len(speech) // mimi.frame_size * mimi.frame_size])
    q = mimi.quantizer  # the codebooks in use: the semantic one(s), then the first acoustic ones
    codebooks = [layer._codebook for layer in q.rvq_first.vq.layers[: q.n_q_semantic]]
    codebooks += [layer._codebook for layer in q.rvq_rest.vq.layers[: mimi.num_codebooks - q.n_q_semantic]]
    mimi.train()
    with torch.no_grad():
        for _ in range(50):
            mimi(speech[None, None])
            if all(c.initialized for c in codebooks):
                break
    assert all(c.initialized for c in codebooks)
    return mimi.eval()


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
    """A stereo file (left: the main speaker's words, right: the user's, each word at its start
    time) and its moshi-finetune transcript beside it; returns the alignments."""
    import soundfile as sf
    import soxr

    n = round(duration * 22050)
    tracks = np.zeros((n, 2), dtype=np.float32)
    alignments = []
    for channel, (words, speaker) in enumerate(((main, "SPEAKER_MAIN"), (user, SPEAKER_USER))):
        for word, start in words:
            clip = spoken(word)
            at = round(start * 22050)
            tracks[at : at + len(clip), channel] += clip[: n - at]
            alignments.append([f" {word}", [start, round(start + len(clip) / 22050, 3)], speaker])  # whisper's leading space
    if rate != 22050:
        tracks = soxr.resample(tracks, 22050, rate)
    sf.write(str(path), tracks, rate)
    alignments.sort(key=lambda a: a[1][0])
    path.with_suffix(".json").write_text(json.dumps({"alignments": alignments}))
    return alignments


def dialogue(duration: float, seed: int) -> tuple[list, list]:
    """Turns of a few words: the main speaker and the user alternate, a word every 0.45 s or so."""
    rng = np.random.default_rng(seed)
    main, user, t, who = [], [], 0.3, 0
    while t < duration - 1.0:
        for _ in range(int(rng.integers(2, 5))):
            if t >= duration - 1.0:
                break
            (main if who == 0 else user).append((str(rng.choice(WORDS)), round(t, 3)))
            t += float(rng.uniform(0.38, 0.55))
        t += 0.4
        who = 1 - who
    return main, user


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
    """Files of the parts: Mimi weights and settings, tokenizer, tiny LMModel (weights + settings)."""
    import sentencepiece as spm
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("kit")
    with single_thread():
        mimi = random_mimi()
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(root / "mimi.safetensors"))
    (root / "mimi.json").write_text(json.dumps(mimi_config()))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # pad_id 3: the id Moshi's text padding uses is never a word piece
        sentence_iterator=iter([" ".join(WORDS)] * 50),
        model_writer=model,
        vocab_size=LM_KWARGS["text_card"],
        pad_id=3,
        hard_vocab_limit=False,
        model_type="unigram",
        minloglevel=2,
    )
    (root / "tokenizer.model").write_bytes(model.getvalue())
    torch.manual_seed(0)
    lm = LMModel(**LM_KWARGS, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(root / "model.safetensors"))
    (root / "lm.json").write_text(json.dumps(LM_KWARGS))
    return {
        "root": root,
        "mimi": root / "mimi.safetensors",
        "mimi_config": root / "mimi.json",
        "tokenizer": root / "tokenizer.model",
        "weights": root / "model.safetensors",
        "lm_config": root / "lm.json",
    }


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
