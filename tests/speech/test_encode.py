"""`ittt moshi-encode` on moshi-finetune's layout (espeak-ng speech, random Mimi, a tokenizer
trained here): frames, word placement, audio codes against Mimi's one-shot encode of each
channel, reruns, bad files, determinism, and `ittt train` on the result."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
import yaml
from safetensors import safe_open

from inplace_ttt.cli import main
from inplace_ttt.speech.encode import METADATA_KEY
from tests.speech.conftest import LM_KWARGS, kit_flags, write_conversation


def encode_args(kit, manifest, out) -> list[str]:
    return ["moshi-encode", str(manifest), *kit_flags(kit), "--out", str(out)]


def read_codes(path):
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes"), json.loads(f.metadata()[METADATA_KEY])


@pytest.fixture(scope="module")
def encoded(kit, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("codes")
    assert main(encode_args(kit, dataset["manifest"], out)) == 0
    return out


def test_frames_words_and_audio_codes_are_where_moshi_expects_them(kit, dataset, encoded):
    import sentencepiece

    from inplace_ttt.speech.loading import load_mimi

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(kit["tokenizer"]))
    mimi = load_mimi(kit["mimi"], json.loads(kit["mimi_config"].read_text()), 8)
    for entry in dataset["entries"]:
        codes, record = read_codes(encoded / entry["path"].replace(".wav", ".safetensors"))
        T = codes.shape[1]
        assert codes.shape[0] == 1 + LM_KWARGS["n_q"] and codes.dtype == torch.int32
        assert abs(T - entry["duration"] * 12.5) <= 1 and record["frames"] == T
        main_words = [a for a in dataset["alignments"][entry["path"]] if a[2] == "SPEAKER_MAIN"]
        starts = [math.floor(a[1][0] * 12.5) for a in main_words]
        laid = 0
        for i, (word, _, _) in enumerate(main_words):
            pieces = tokenizer.encode(word.strip())
            room = min(len(pieces), (starts[i + 1] if i + 1 < len(main_words) else T) - starts[i])  # the next word cuts it
            assert codes[0, starts[i] : starts[i] + room].tolist() == pieces[:room], word
            if starts[i] > 0 and (i == 0 or starts[i - 1] + len(tokenizer.encode(main_words[i - 1][0].strip())) < starts[i]):
                assert codes[0, starts[i] - 1] == 0  # end of padding right before the word
            laid += room
        text = codes[0].tolist()
        assert sum(t not in (3, 0) for t in text) == laid  # nothing else: the user's words are not Moshi's text
        assert record["words"] == len(main_words)
        # the audio: Mimi's one-shot encode of each channel, resampled whole. Not every code equals
        # it: frames near a tie between two codes go either way with float rounding (silent frames
        # share one latent, so they flip together; moshi's own one-shot encode of one channel and of
        # both at once differ as much), so each codebook must agree on 95% of its frames, and agree
        # far less with the other channel's codes (the channels are where they belong)
        audio, rate = sf.read(str(dataset["root"] / entry["path"]), dtype="float32")
        references = []
        for channel in (0, 1):
            x = torch.from_numpy(soxr.resample(audio[:, channel], rate, 24000))[None, None]
            with torch.no_grad():
                references.append(mimi.encode(x)[0])
            assert references[-1].shape[-1] == T
        model, user = codes[1:9].long(), codes[9:17].long()
        agree = lambda a, b: (a == b).float().mean(-1)  # noqa: E731  (per codebook)
        assert (agree(model, references[0]) > 0.95).all() and (agree(user, references[1]) > 0.95).all(), entry["path"]
        assert agree(model, references[1]).mean() < 0.8 and agree(user, references[0]).mean() < 0.8, entry["path"]
        assert all(len(codes[k].unique()) > 3 for k in range(1, 17))  # codes follow the audio


def test_encoding_is_deterministic(kit, dataset, encoded, tmp_path):
    manifest = tmp_path / "data.jsonl"
    shutil.copy(dataset["root"] / "c.wav", tmp_path / "c.wav")
    shutil.copy(dataset["root"] / "c.json", tmp_path / "c.json")
    manifest.write_text(json.dumps({"path": "c.wav", "duration": 6.5}) + "\n")
    assert main(encode_args(kit, manifest, tmp_path / "again")) == 0
    assert torch.equal(read_codes(tmp_path / "again" / "c.safetensors")[0], read_codes(encoded / "c.safetensors")[0])


def test_a_rerun_skips_done_files_and_each_bad_file_is_named_and_skipped(kit, dataset, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    write_conversation(root / "good.wav", 3.0, 16000, [("hello", 0.3), ("there", 0.9)], [("fine", 2.0)])
    sf.write(str(root / "mono.wav"), np.zeros(16000, dtype=np.float32), 16000)
    (root / "mono.json").write_text(json.dumps({"alignments": []}))
    write_conversation(root / "notranscript.wav", 2.0, 16000, [("hello", 0.3)], [])
    (root / "notranscript.json").unlink()
    write_conversation(root / "badjson.wav", 2.0, 16000, [("hello", 0.3)], [])
    (root / "badjson.json").write_text('{"alignments": [["hello", [0.3,')
    write_conversation(root / "late.wav", 2.0, 16000, [("hello", 0.3)], [])
    (root / "late.json").write_text(json.dumps({"alignments": [["hello", [1.5, 2.6], "SPEAKER_MAIN"]]}))
    write_conversation(root / "backwards.wav", 2.0, 16000, [("hello", 0.3)], [])
    (root / "backwards.json").write_text(json.dumps({"alignments": [["hello", [0.9, 0.5], "SPEAKER_MAIN"]]}))
    (root / "noise.wav").write_bytes(b"RIFF\x00\x00 this is not audio")
    (root / "noise.json").write_text(json.dumps({"alignments": []}))
    names = ["good", "mono", "notranscript", "badjson", "late", "backwards", "noise", "missing"]
    durations = {"good": 3.0, "mono": 1.0}
    manifest = root / "data.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"{n}.wav", "duration": durations.get(n, 2.0)}) + "\n" for n in names))
    out = tmp_path / "codes"
    assert main(encode_args(kit, manifest, out)) == 2
    err = capsys.readouterr().err
    for name, why in [
        ("mono", "1 channel.*stereo"),
        ("notranscript", "no transcript"),
        ("badjson", "not valid JSON"),
        ("late", "past the end of the audio"),
        ("backwards", "start <= end"),
        ("noise", "unreadable audio"),
        ("missing", "no such audio file"),
    ]:
        assert any(f"skipped {name}.wav" in line and re.search(why, line) for line in err.splitlines()), (name, err)
    assert sorted(p.name for p in out.rglob("*")) == ["good.safetensors"]  # nothing half-written, no temporaries
    done = out / "good.safetensors"
    mtime = done.stat().st_mtime_ns
    assert main(encode_args(kit, manifest, out)) == 2
    assert "1 already done" in capsys.readouterr().out and done.stat().st_mtime_ns == mtime
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")  # the good file alone, done already
    assert main(encode_args(kit, manifest, out)) == 0


def test_files_encoded_with_other_settings_are_not_taken_as_done(kit, dataset, encoded, tmp_path, capsys):
    other = json.loads(kit["lm_config"].read_text())
    other["existing_text_padding_id"] = 5  # another model's text padding
    (tmp_path / "lm.json").write_text(json.dumps(other))
    args = encode_args(kit, dataset["manifest"], encoded)
    args[args.index("--lm-kwargs") + 1] = str(tmp_path / "lm.json")
    assert main(args) == 2
    assert "encoded with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "holds no conversations"),
        ("\n\n", "holds no conversations"),
        ('{"path": "a.wav", "duration": 1.0}\n{"path": "a.wav"\n', r"data.jsonl:2: not valid JSON"),
        ('{"duration": 1.0}\n', r"data.jsonl:1: expected"),
        ('{"path": "a.wav", "duration": -1}\n', r"data.jsonl:1: 'duration' must be"),
        ('{"path": "../a.wav", "duration": 1}\n', r"data.jsonl:1: path '../a.wav' must be relative"),
    ],
)
def test_a_bad_manifest_is_refused_before_anything_is_written(kit, tmp_path, capsys, content, message):
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(content)
    assert main(encode_args(kit, manifest, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("ittt moshi-encode: error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_encoded_conversations_train_for_a_few_steps(kit, encoded, tmp_path):
    config = {
        "model_type": "moshi",
        "model": {"weights": str(kit["weights"]), "lm_kwargs": str(kit["lm_config"])},
        "ttt": {"layers": [0, 2], "chunk_size": 8, "target_source": "token_embeddings"},
        "data": {"train": [str(encoded)], "row_length": 32},
        "train": {"output_dir": str(tmp_path / "run"), "mode": "ttt_only", "learning_rate": 1e-3, "max_steps": 3, "batch_size": 2, "logging_steps": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logs = [log for log in logs if "loss" in log]  # the engine's last line is its summary (runtime, mean loss)
    assert [log["step"] for log in logs] == [1, 2, 3]
    assert all(np.isfinite(log["loss"]) and log["ttt/layer0/grad_conv"] > 0 for log in logs)
    assert (tmp_path / "run" / "final" / "ttt.safetensors").is_file()


def test_the_published_mimi_architecture_encodes_with_moshis_default_settings(kit, dataset, tmp_path):
    """`loaders.get_mimi(None)` (the published size, random weights) read back through moshi's
    default Mimi settings: no --mimi-config, Moshi's 2048 codes per codebook."""
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(0)
    mimi = loaders.get_mimi(None)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(tmp_path / "mimi.safetensors"))
    (tmp_path / "lm.json").write_text(json.dumps({**LM_KWARGS, "card": 2048}))
    write_conversation(tmp_path / "short.wav", 2.0, 24000, [("hello", 0.2)], [("fine", 1.0)])
    (tmp_path / "data.jsonl").write_text(json.dumps({"path": "short.wav", "duration": 2.0}) + "\n")
    args = [
        "moshi-encode",
        str(tmp_path / "data.jsonl"),
        "--mimi",
        str(tmp_path / "mimi.safetensors"),
        "--tokenizer",
        str(kit["tokenizer"]),
        "--lm-kwargs",
        str(tmp_path / "lm.json"),
        "--out",
        str(tmp_path / "codes"),
    ]
    assert main(args) == 0
    codes, record = read_codes(tmp_path / "codes" / "short.safetensors")
    assert codes.shape == (17, 25) and record["words"] == 1 and record["sample_rate"] == 24000
