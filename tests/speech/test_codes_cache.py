"""A moshi-finetune manifest in `ittt train`'s data: encoded with Mimi on first use (the codes of
`ittt moshi-encode`), then read from the cache; a changed wav or other settings encode again; a
moshi-finetune config over wav files trains, TTT and its baseline on the very same codes."""

import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open

from inplace_ttt.cli import main
from inplace_ttt.speech import codes_cache
from inplace_ttt.speech.checkpoint import MoshiFiles
from inplace_ttt.speech.codes_cache import manifest_codes
from tests.speech.conftest import LM_KWARGS, kit_flags
from tests.tiny_moshi import hub_snapshot


def codes_of(path) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes")


def kit_files(kit) -> MoshiFiles:
    return MoshiFiles(kit["weights"], LM_KWARGS, kit["mimi"], json.loads(kit["mimi_config"].read_text()), kit["tokenizer"])


def test_a_manifest_is_encoded_once_then_read_from_the_cache(kit, dataset, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(dataset["root"], data)
    cache = tmp_path / "cache"
    first = manifest_codes(data / "data.jsonl", kit_files(kit), cache, progress=False)
    assert len(first) == 3 and all(p.is_file() for p in first)
    assert main(["moshi-encode", str(data / "data.jsonl"), *kit_flags(kit), "--out", str(tmp_path / "encoded")]) == 0
    for path, entry in zip(first, dataset["entries"]):  # the codes `ittt moshi-encode` writes, in the manifest's order
        assert torch.equal(codes_of(path), codes_of((tmp_path / "encoded" / entry["path"]).with_suffix(".safetensors")))

    encoded = []
    real = codes_cache.Encoder

    class Counting(real):
        def encode(self, conversation):
            encoded.append(conversation.path)
            return super().encode(conversation)

    monkeypatch.setattr(codes_cache, "Encoder", Counting)
    assert manifest_codes(data / "data.jsonl", kit_files(kit), cache, progress=False) == first and encoded == []  # no Mimi loaded, nothing encoded
    wav = data / dataset["entries"][1]["path"]
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the wav changed: only it is encoded again
    again = manifest_codes(data / "data.jsonl", kit_files(kit), cache, progress=False)
    assert encoded == [dataset["entries"][1]["path"]] and again[0] == first[0] and again[2] == first[2] and again[1] != first[1]
    other = MoshiFiles(kit["weights"], LM_KWARGS, kit["mimi"], kit_files(kit).mimi_config, kit["tokenizer"])
    user = manifest_codes(data / "data.jsonl", other, cache, main_speaker="SPEAKER_USER", progress=False)  # other settings: another folder
    assert {p.parent for p in user}.isdisjoint({p.parent for p in first}) and len(encoded) == 4


def test_a_bad_file_stops_before_training_with_its_name(kit, dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset["root"], data)
    (data / "c.json").unlink()
    with pytest.raises(ValueError, match=r"data.jsonl: c.wav: .*no transcript"):
        manifest_codes(data / "data.jsonl", kit_files(kit), tmp_path / "cache", progress=False)


@pytest.mark.integration
def test_moshi_finetunes_config_over_wav_files_trains_with_ttt_and_without(kit, dataset, tmp_path, monkeypatch):
    """moshi-finetune's YAML naming a repo (a snapshot in huggingface_hub's cache, offline) and a
    manifest of wav files: the first run encodes, the baseline (`--ttt null`) reads the cache, and
    both start from the same loss."""
    import huggingface_hub.constants as hf

    repo = "kyutai/tiny-moshi-with-audio"
    files = {"model.safetensors": kit["weights"], "mimi.safetensors": kit["mimi"], "mimi.json": kit["mimi_config"], "tokenizer.model": kit["tokenizer"]}
    names = {"mimi_name": "mimi.safetensors", "mimi_config_name": "mimi.json", "tokenizer_name": "tokenizer.model"}
    hub_snapshot(tmp_path / "hub", repo, files, {**LM_KWARGS, **names})
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = {
        "data": {"train_data": str(dataset["manifest"]), "shuffle": True},
        "moshi_paths": {"hf_repo_id": repo},
        "lora": {"enable": True, "rank": 2, "scaling": 2.0},
        "duration_sec": 2.56,  # rows of 32 steps: 4 TTT chunks of 8
        "batch_size": 2,
        "max_steps": 2,
        "param_dtype": "float32",
        "optim": {"lr": 1e-3},
        "save_adapters": False,
        "run_dir": str(tmp_path / "ttt"),
        "ttt": {"layers": [0, 2], "chunk_size": 8},
    }
    (tmp_path / "moshi.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "moshi.yaml")]) == 0
    cached = sorted((tmp_path / "xdg" / "inplace_ttt" / "moshi-codes").rglob("*.safetensors"))
    assert len(cached) == 3

    def no_mimi(*args, **kwargs):
        raise AssertionError("the baseline encoded again")

    monkeypatch.setattr(codes_cache, "Encoder", no_mimi)
    assert main(["train", str(tmp_path / "moshi.yaml"), "--ttt", "null", "--run_dir", str(tmp_path / "baseline")]) == 0
    first = {}
    for run in ("ttt", "baseline"):
        logs = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        first[run] = next(log["loss"] for log in logs if log.get("step") == 1 and "loss" in log)
    assert first["ttt"] == first["baseline"]
    assert sorted(p.name for p in (tmp_path / "ttt" / "final").iterdir()) == ["model.safetensors", "ttt.safetensors"]
