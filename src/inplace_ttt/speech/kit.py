"""`ittt moshi-kit`: small, random Moshi parts to try every Moshi command offline.

A fresh machine has none of Kyutai's files, and moshi's own random Mimi (`loaders.get_mimi(None)`)
is no stand-in: its codebooks start at zero, so every frame maps to code 0 and a model trained or
played on those codes sees one value. Here Mimi's codebooks are started the way moshi starts them
in training, by its own k-means on the latents of speech-like audio, so that codes follow the
audio (many distinct codes per codebook on real speech, tested on espeak-ng's). The "speech" is
synthesised here (voiced syllables with moving formants and noise bursts), so the kit needs no
voice, no data set and no download, and is the same on every machine for a seed.

The kit folder holds what the commands take: Mimi's weights and settings, a sentencepiece
tokenizer trained on the text below, a tiny `LMModel`'s settings and random weights, moshi's own
``config.json`` (read by moshi's `CheckpointInfo`, so moshi's tools read the kit too), a few
stereo conversations in moshi-finetune's format, a mono recording of a user, and a training YAML.
"""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, write_atomic

RATE = 24000  # Mimi's sample rate: the kit's audio is written at it
FRAME_RATE = 12.5

TEXT = (
    "hello there how are you doing today I am fine thank you the weather is lovely shall we talk about music or maybe books "
    "tell me more please what did you read last week a story about the sea and a small boat that sailed far away "
    "do you like to cook on sunday morning my sister makes bread with honey and we walk in the park after lunch "
    "the children play near the river while the old man feeds the birds it was a quiet evening and the stars came out"
)
WORDS = tuple(dict.fromkeys(TEXT.split()))

# A tiny LMModel with Moshi 7B's stream layout (text, 8 codebooks of its own, 8 of the user's, acoustic
# delay 1) and Moshi's text padding ids; the kit's Mimi has 64 codes per codebook, its tokenizer 64 pieces.
LM_KWARGS = dict(
    delays=[0] + [0, 1, 1, 1, 1, 1, 1, 1] * 2,
    n_q=16,
    dep_q=8,
    card=64,
    text_card=64,
    dim=32,
    num_heads=4,
    num_layers=3,
    hidden_scale=4.125,
    causal=True,
    context=64,
    max_period=10000,
    gating="silu",
    norm="rms_norm_f32",
    positional_embedding="rope",
    depformer_dim=16,
    depformer_num_heads=2,
    depformer_num_layers=1,
    depformer_dim_feedforward=32,
    depformer_multi_linear=True,
    depformer_weights_per_step=True,
    depformer_pos_emb="none",
    depformer_context=8,
)


def mimi_config() -> dict:
    """Mimi's architecture (moshi's `_mimi_config`) at a small width: 24 kHz in, 12.5 frames per
    second, 8 codebooks of 64 codes."""
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    cfg["seanet"].update(n_filters=4, dimension=32)
    cfg["quantizer"].update(dimension=16, n_q=8, bins=64, input_dimension=32, output_dimension=32)
    cfg["transformer"].update(d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32, output_dimensions=[32])
    return cfg


def babble(seconds: float, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """Speech-like mono audio (float32, peak about 0.5): voiced syllables (`_syllable`), some led or
    followed by a noise burst (a fricative), separated by short gaps and the odd pause."""
    out = np.zeros(round(seconds * rate), dtype=np.float32)
    at = 0
    while at < len(out):
        piece = _syllable(rng, rate)
        out[at : at + len(piece)] = piece[: len(out) - at]
        at += len(piece) + round(rate * (rng.uniform(0.3, 0.6) if rng.random() < 0.15 else rng.uniform(0.02, 0.15)))
    return out


def _syllable(rng: np.random.Generator, rate: int) -> np.ndarray:
    """A voiced syllable, source and filter: a glottal pulse train on a pitch glide through three
    formant resonators, gliding from one vowel to another (two filterings, cross-faded)."""
    n = round(rate * rng.uniform(0.12, 0.3))
    ramp = np.linspace(0.0, 1.0, n)
    f0 = rng.uniform(85, 240) * (1 + rng.uniform(-0.25, 0.25) * ramp)
    phase = np.cumsum(f0) / rate
    source = np.diff(np.floor(phase), prepend=0.0) + 0.01 * rng.standard_normal(n)  # one pulse a period, a little breath
    spectrum = np.fft.rfft(source)
    z = np.exp(-1j * np.linspace(0, np.pi, len(spectrum)))  # e^{-iω} at the FFT's frequencies
    vowels = []
    for _ in range(2):
        response = np.ones_like(z)
        for lo, hi, bandwidth in ((280, 850, 80), (850, 2400, 110), (2300, 3300, 160)):
            r, theta = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * rng.uniform(lo, hi) / rate
            response *= (1 - r) / (1 - 2 * r * np.cos(theta) * z + r * r * z * z)  # a two-pole resonator at the formant
        vowels.append(np.fft.irfft(spectrum * response, n))  # filtered in the frequency domain (numpy only)
    voiced = (vowels[0] * (1 - ramp) + vowels[1] * ramp) * np.sin(np.pi * ramp) ** 0.5  # onset and decay
    parts = [voiced / (np.abs(voiced).max() + 1e-9) * rng.uniform(0.2, 0.5)]
    if rng.random() < 0.4:
        noise = _hiss(round(rate * rng.uniform(0.04, 0.12)), rng, rate)
        parts.insert(0 if rng.random() < 0.5 else 1, noise)
    return np.concatenate(parts).astype(np.float32)


def _hiss(n: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """A fricative: white noise kept to a band between 2 and 8 kHz, faded in and out."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freq = np.fft.rfftfreq(n, 1 / rate)
    low = rng.uniform(2000, 4500)
    spectrum[(freq < low) | (freq > low + rng.uniform(1500, 3500))] = 0
    x = np.fft.irfft(spectrum, n) * np.hanning(n)
    return x / (np.abs(x).max() + 1e-9) * rng.uniform(0.05, 0.2)


def random_mimi(config: dict | None = None, *, seed: int = 0, speech: np.ndarray | None = None):
    """moshi's Mimi (`loaders.get_mimi`, `config` None: the published size) with random weights
    whose codebooks moshi's own k-means starts on `speech` (24 kHz mono; default: 20 s of
    `babble`). moshi starts a codebook on the first training-mode forward that reaches it
    (quantizer dropout reaches the later ones by chance), so forwards repeat until all are."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    random.seed(seed)  # moshi's quantizer dropout draws from `random`
    mimi = loaders.get_mimi(None, config, num_codebooks=8)
    if speech is None:
        speech = babble(20.0, np.random.default_rng(seed), mimi.sample_rate)
    speech = torch.from_numpy(np.ascontiguousarray(speech[: len(speech) // mimi.frame_size * mimi.frame_size], dtype=np.float32))
    q = mimi.quantizer  # the codebooks in use: the semantic one(s), then the first acoustic ones
    codebooks = [layer._codebook for layer in q.rvq_first.vq.layers[: q.n_q_semantic]]
    codebooks += [layer._codebook for layer in q.rvq_rest.vq.layers[: mimi.num_codebooks - q.n_q_semantic]]
    mimi.train()
    with torch.no_grad():
        for _ in range(50):
            mimi(speech[None, None])
            if all(c.initialized for c in codebooks):
                break
    if not all(c.initialized for c in codebooks):
        raise RuntimeError("Mimi's k-means start did not reach every codebook in 50 forwards")
    return mimi.eval()


def train_tokenizer(path: str | Path, vocab_size: int, pad_id: int = 3) -> None:
    """A sentencepiece model of exactly `vocab_size` pieces trained on `TEXT` (unigram, as Moshi's),
    with `pad_id` (3: Moshi's text padding id, never a word piece) reserved."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([TEXT] * 20),
        model_writer=model,
        vocab_size=vocab_size,
        pad_id=pad_id,
        model_type="unigram",
        minloglevel=2,
    )
    with atomic_path(path) as tmp:
        tmp.write_bytes(model.getvalue())


def dialogue(duration: float, rng: np.random.Generator, words: tuple[str, ...] = WORDS) -> tuple[list, list]:
    """Turns of a few words, `(main, user)` lists of `(word, start_s)`: the main speaker and the
    user alternate, a word every 0.45 s or so."""
    main, user, t, who = [], [], 0.3, 0
    while t < duration - 1.0:
        for _ in range(int(rng.integers(2, 5))):
            if t >= duration - 1.0:
                break
            (main if who == 0 else user).append((str(rng.choice(words)), round(t, 3)))
            t += float(rng.uniform(0.38, 0.55))
        t += 0.4
        who = 1 - who
    return main, user


def write_conversation(path: Path, duration: float, rate: int, main: list, user: list, voice: Callable[[str], np.ndarray], voice_rate: int) -> list:
    """A stereo file at `rate` (left: the main speaker's words, right: the user's, each word
    `voice(word)` at `voice_rate`, placed at its start) and its moshi-finetune transcript beside it
    (``path.json``); returns the alignments."""
    import soundfile as sf
    import soxr

    n = round(duration * voice_rate)
    tracks = np.zeros((n, 2), dtype=np.float32)
    alignments = []
    for channel, (said, speaker) in enumerate(((main, "SPEAKER_MAIN"), (user, "SPEAKER_USER"))):
        for word, start in said:
            clip = voice(word)
            at = round(start * voice_rate)
            tracks[at : at + len(clip), channel] += clip[: n - at]
            alignments.append([f" {word}", [start, round(start + len(clip) / voice_rate, 3)], speaker])  # whisper's leading space
    if rate != voice_rate:
        tracks = soxr.resample(tracks, voice_rate, rate)
    sf.write(str(path), tracks, rate)
    alignments.sort(key=lambda a: a[1][0])
    write_atomic(path.with_suffix(".json"), json.dumps({"alignments": alignments}))
    return alignments


def _babbled_word(rng: np.random.Generator) -> Callable[[str], np.ndarray]:
    """A voice for the kit's conversations: each word one to three synthetic syllables."""

    def say(word: str) -> np.ndarray:
        return np.concatenate([_syllable(rng, RATE) for _ in range(min(3, 1 + len(word) // 4))])

    return say


def _save_state(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))


CONVERSATIONS = (("train/a.wav", 20.0), ("train/b.wav", 16.0), ("train/c.wav", 24.0), ("heldout/d.wav", 20.0))


def write_kit(out: str | Path, *, seed: int = 0, conversations: tuple = CONVERSATIONS, user_seconds: float = 10.0) -> dict[str, Path]:
    """Write the kit into folder `out` (new, empty, or an earlier kit's, whose files are replaced);
    returns the paths by name. Deterministic for a seed."""
    from moshi.models.lm import LMModel

    out = Path(out).resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / KIT_MARK).is_file():
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"moshi-kit: {out} holds files no kit wrote ({shown}, ...); give a new or empty folder (a kit's files would replace same-named ones)")
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in _FILES.items()}
    config = mimi_config()
    _save_state(random_mimi(config, seed=seed), paths["mimi"])
    write_atomic(paths["mimi_config"], json.dumps(config, indent=2) + "\n")
    train_tokenizer(paths["tokenizer"], LM_KWARGS["text_card"])
    write_atomic(paths["lm_kwargs"], json.dumps(LM_KWARGS, indent=2) + "\n")
    torch.manual_seed(seed)
    _save_state(LMModel(**LM_KWARGS, dtype=torch.float32), paths["weights"])
    # moshi's own checkpoint config (CheckpointInfo.from_hf_repo(..., config_path=...)): the LMModel
    # settings plus the files, "file://" forcing moshi's `hf_get` to read them locally
    names = {"moshi_name": paths["weights"], "mimi_name": paths["mimi"], "tokenizer_name": paths["tokenizer"], "mimi_config_name": paths["mimi_config"]}
    checkpoint = {**LM_KWARGS, **{k: f"file://{v}" for k, v in names.items()}, "model_type": "moshi"}
    write_atomic(paths["moshi_config"], json.dumps(checkpoint, indent=2) + "\n")

    rng = np.random.default_rng(seed)
    manifests: dict[str, list] = {}
    for name, duration in conversations:
        audio = paths["data"] / name
        audio.parent.mkdir(parents=True, exist_ok=True)
        write_conversation(audio, duration, RATE, *dialogue(duration, rng), voice=_babbled_word(rng), voice_rate=RATE)
        manifests.setdefault(audio.parent.name, []).append({"path": audio.name, "duration": duration})
    for split, entries in manifests.items():
        write_atomic(paths["data"] / split / "data.jsonl", "".join(json.dumps(e) + "\n" for e in entries))
    import soundfile as sf

    with atomic_path(paths["user"]) as tmp:
        sf.write(str(tmp), babble(user_seconds, rng), RATE, format="WAV")
    write_atomic(paths["train_yaml"], _train_yaml(out))
    write_atomic(out / KIT_MARK, json.dumps({"seed": seed}) + "\n")  # last: a folder holding it holds a whole kit
    return paths


KIT_MARK = "moshi-kit.json"  # marks a folder `write_kit` filled, which a new kit may replace


_FILES = {
    "mimi": "mimi.safetensors",
    "mimi_config": "mimi.json",
    "tokenizer": "tokenizer.model",
    "lm_kwargs": "lm.json",
    "weights": "model.safetensors",
    "moshi_config": "config.json",
    "data": "data",
    "user": "user.wav",
    "train_yaml": "moshi-ttt.yaml",
}


def _train_yaml(out: Path) -> str:
    """`ittt train`'s YAML for the kit: TTT on layer 0 of the tiny model, chunks of 8 steps, rows of
    the model's context, on the codes `ittt moshi-encode` writes into ``OUT/codes/``."""
    import yaml

    run = {
        "model_type": "moshi",
        "model": {"weights": str(out / "model.safetensors"), "lm_kwargs": str(out / "lm.json"), "dtype": "float32"},
        "ttt": {"layers": [0], "chunk_size": 8, "ttt_lr": 3.0, "target_source": "token_embeddings"},
        "data": {"train": [str(out / "codes" / "train")], "eval": [str(out / "codes" / "heldout")], "row_length": LM_KWARGS["context"]},
        "train": {
            "output_dir": str(out / "runs" / "moshi-ttt"),
            "mode": "ttt_only",
            "learning_rate": 1.0e-3,
            "max_steps": 20,
            "per_device_train_batch_size": 2,
            "logging_steps": 5,
            "save_steps": 20,
            "eval_steps": 10,
        },
    }
    return (
        f"# the kit's training run; its data are the codes of `ittt moshi-encode {out / 'data'}/<split>/data.jsonl ... --out {out / 'codes'}/<split>`\n"
        + yaml.safe_dump(run, sort_keys=False)
    )
