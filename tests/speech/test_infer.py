"""`ittt moshi-infer`: a user's recording through a tiny In-Place TTT Moshi with moshi's Mimi and
LMGen; output length, update counts, transcript, determinism and bad input."""

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from moshi.models.loaders import get_moshi_lm
from safetensors.torch import save_file

from inplace_ttt import TTTConfig
from inplace_ttt.cli import main
from inplace_ttt.families.moshi import load_moshi, save_ttt
from tests.speech.conftest import LM_KWARGS, dialogue, kit_flags, spoken
from tests.tiny_moshi import active_targets

CHUNK = 16


@pytest.fixture(scope="module")
def ttt_model(kit, tmp_path_factory):
    """The tiny LMModel converted (TTT on layers 0 and 2, chunk 16) with trained-looking targets, saved."""
    lm = load_moshi(kit["weights"], LM_KWARGS, config=TTTConfig(layers=[0, 2], chunk_size=CHUNK, target_source="token_embeddings"), dtype=torch.float32)
    active_targets(lm)
    return save_ttt(lm, tmp_path_factory.mktemp("ttt"))


def user_recording(path, seconds: float, rate: int, seed: int = 0):
    """The user's side alone: espeak-ng words through `seconds` of mono audio at `rate`."""
    words, _ = dialogue(seconds, seed)
    x = np.zeros(round(seconds * 22050), dtype=np.float32)
    for word, start in words:
        clip = spoken(word)[: len(x) - round(start * 22050)]
        x[round(start * 22050) : round(start * 22050) + len(clip)] += clip
    sf.write(str(path), soxr.resample(x, 22050, rate) if rate != 22050 else x, rate)
    return path


def infer_args(kit, model, inp, out, *extra) -> list[str]:
    return [
        "moshi-infer",
        str(inp),
        str(out),
        "--weights",
        str(model / "model.safetensors"),
        "--ttt",
        str(model / "ttt.safetensors"),
        *kit_flags(kit),
        *extra,
    ]


def test_a_20_second_recording_gives_20_seconds_of_moshi_and_counts_updates(kit, ttt_model, tmp_path, capsys):
    inp = user_recording(tmp_path / "user.wav", 20.0, 16000)  # resampled to 24 kHz on the way in
    out = tmp_path / "moshi.wav"
    assert main(infer_args(kit, ttt_model, inp, out)) == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (24000, 1, 20 * 24000)  # the input's length, at 24 kHz
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == 250 and report["steps"] == 251  # one frame per 80 ms; the first one is stepped twice, as moshi does
    assert report["ttt_layers"] == [0, 2] and report["updates"] == {"0": 251 // CHUNK, "2": 251 // CHUNK}  # a fold per complete chunk
    assert report["step_ms"]["median"] > 0 and report["real_time_factor"] > 0
    lines = [line.split("\t") for line in out.with_suffix(".txt").read_text().splitlines()]
    assert len(lines) == report["words"] > 0
    assert all(0 <= float(a) < float(b) <= 20.08 and text for a, b, text in lines)
    assert "real-time factor" in capsys.readouterr().out


def test_inference_is_deterministic_for_a_seed(kit, ttt_model, tmp_path):
    inp = user_recording(tmp_path / "user.wav", 3.01, 24000, seed=2)  # 37.6 frames: the last output frame is cut to fit
    outs = {}
    for name, extra in (("a", []), ("b", []), ("other_seed", ["--seed", "1"]), ("plain", [])):
        args = infer_args(kit, ttt_model, inp, tmp_path / f"{name}.wav", *extra)
        if name == "plain":
            i = args.index("--ttt")
            del args[i : i + 2]
        assert main(args) == 0
        outs[name] = (sf.read(str(tmp_path / f"{name}.wav"))[0], (tmp_path / f"{name}.txt").read_text())  # (the WAV header holds a time stamp)
    assert np.array_equal(outs["a"][0], outs["b"][0]) and outs["a"][1] == outs["b"][1]
    assert len(outs["a"][0]) == sf.info(str(inp)).frames and len(outs["a"][0]) % 1920
    assert not np.array_equal(outs["other_seed"][0], outs["a"][0])
    report = json.loads((tmp_path / "plain.json").read_text())
    assert report["ttt_layers"] == [] and report["updates"] == {}  # the model without TTT runs too (the baseline)


def test_bad_input_is_refused_naming_it_and_nothing_is_written(kit, ttt_model, tmp_path, capsys):
    mono = user_recording(tmp_path / "user.wav", 1.0, 24000)
    sf.write(str(tmp_path / "stereo.wav"), np.zeros((24000, 2), dtype=np.float32), 24000)
    sf.write(str(tmp_path / "three.wav"), np.zeros((24000, 3), dtype=np.float32), 24000)
    (tmp_path / "model.pt").write_bytes(b"a pickle")
    out = tmp_path / "out" / "moshi.wav"
    out.parent.mkdir()
    cases = [
        (infer_args(kit, ttt_model, tmp_path / "stereo.wav", out), "stereo.wav has 2 channels: choose the user's with --channel"),
        (infer_args(kit, ttt_model, tmp_path / "three.wav", out, "--channel", "left"), "three.wav has 3 channels"),
        (infer_args(kit, ttt_model, tmp_path / "gone.wav", out), "gone.wav: no such audio file"),
        (infer_args(kit, ttt_model, mono, tmp_path / "out" / "moshi.mp3"), "must be a .wav file"),
        (
            [a if a != str(ttt_model / "model.safetensors") else str(tmp_path / "model.pt") for a in infer_args(kit, ttt_model, mono, out)],
            "model.pt is not a safetensors file",
        ),
        (
            [a if a != str(ttt_model / "ttt.safetensors") else str(tmp_path / "none.safetensors") for a in infer_args(kit, ttt_model, mono, out)],
            "TTT weights: no such file",
        ),
        ([a for a in infer_args(kit, ttt_model, mono, out) if a not in ("--mimi-config", str(kit["mimi_config"]))], "does not fit the Mimi settings"),
        (
            [a if a != str(kit["lm_config"]) else str(tmp_path / "wider.json") for a in infer_args(kit, ttt_model, mono, out)],
            "model.safetensors does not load with these --lm-kwargs: size mismatch for emb.0.weight",
        ),
        (
            [a if a != str(kit["lm_config"]) else str(tmp_path / "bogus.json") for a in infer_args(kit, ttt_model, mono, out)],
            "does not load with these --lm-kwargs: StreamingTransformerLayer.__init__() got an unexpected keyword argument 'bogus'",
        ),
    ]
    (tmp_path / "wider.json").write_text(json.dumps({**LM_KWARGS, "dim": LM_KWARGS["dim"] * 2}))
    (tmp_path / "bogus.json").write_text(json.dumps({**LM_KWARGS, "bogus": 1}))
    lut = {"n_bins": 3, "dim": 8, "tokenizer": "noop", "possible_values": ["calm", "happy", "sad"]}
    conditioned = {**LM_KWARGS, "conditioners": {"description": {"type": "lut", "lut": lut}}, "fuser": {"sum": ["description"]}}
    (tmp_path / "conditioned.json").write_text(json.dumps(conditioned))
    save_file(
        {k: v.contiguous() for k, v in get_moshi_lm(None, lm_kwargs=conditioned, dtype=torch.float32).state_dict().items()},
        str(tmp_path / "conditioned.safetensors"),
    )
    args = infer_args(kit, ttt_model, mono, out)
    i = args.index("--ttt")
    del args[i : i + 2]
    args[args.index("--weights") + 1], args[args.index("--lm-kwargs") + 1] = str(tmp_path / "conditioned.safetensors"), str(tmp_path / "conditioned.json")
    cases.append((args, "a conditioned LMModel"))
    for args, message in cases:
        assert main(args) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("ittt moshi-infer: error: ") and message in err, (message, err)
    assert list(out.parent.iterdir()) == []
