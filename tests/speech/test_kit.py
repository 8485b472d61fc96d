"""`ittt moshi-kit`: its Mimi's codes follow real speech (espeak-ng's), moshi's own loaders read its
files, and the Moshi commands of docs/moshi.md run on it from a fresh folder."""

import json
import shlex

import numpy as np
import pytest
import soxr
import torch
from safetensors.torch import load_file

from inplace_ttt.cli import main
from inplace_ttt.speech.kit import LM_KWARGS, babble, mimi_config
from tests.speech.conftest import WORDS, spoken


def espeak_sentence() -> torch.Tensor:
    """About 8 s of espeak-ng speech at 24 kHz, a whole number of Mimi frames: `[1, 1, samples]`."""
    x = soxr.resample(np.concatenate([spoken(w) for w in WORDS]), 22050, 24000)
    return torch.from_numpy(x[: len(x) // 1920 * 1920].astype(np.float32))[None, None]


def distinct_codes(mimi, audio: torch.Tensor) -> list[int]:
    with torch.no_grad():
        codes = mimi.encode(audio)[0]
    return [len(set(c.tolist())) for c in codes]


def test_the_kits_mimi_read_by_moshis_loader_gives_varied_codes_on_real_speech(kit):
    from moshi.models import loaders

    speech = espeak_sentence()
    frames = speech.shape[-1] // 1920
    kit_mimi = loaders.get_mimi(str(kit["mimi"]), json.loads(kit["mimi_config"].read_text()), num_codebooks=8)
    counts = distinct_codes(kit_mimi, speech)
    assert frames >= 80 and all(n >= 20 for n in counts), (frames, counts)  # of 64 codes per codebook
    torch.manual_seed(0)
    assert distinct_codes(loaders.get_mimi(None, mimi_config(), num_codebooks=8), speech) == [1] * 8  # moshi's own random Mimi: code 0 only


def test_moshis_checkpoint_info_reads_the_kit_without_a_download(kit, monkeypatch):
    """config.json is moshi's own checkpoint config: `CheckpointInfo` finds every file of the kit locally."""
    from moshi.models import loaders

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = loaders.CheckpointInfo.from_hf_repo("kyutai/none", config_path=str(kit["moshi_config"]))
    mimi, lm, tokenizer = info.get_mimi(), info.get_moshi(dtype=torch.float32), info.get_text_tokenizer()
    for module, file in ((mimi, kit["mimi"]), (lm, kit["weights"])):
        saved = load_file(str(file))
        state = module.state_dict()
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    assert lm.dim == LM_KWARGS["dim"] and mimi.cardinality == LM_KWARGS["card"]
    assert tokenizer.vocab_size() == LM_KWARGS["text_card"] and tokenizer.pad_id() == lm.text_padding_token_id


def test_the_kits_tokenizer_knows_its_conversations_words_and_the_yaml_names_its_files(kit):
    import sentencepiece
    import yaml

    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(kit["tokenizer"]))
    alignments = json.loads((kit["data"] / "train" / "a.json").read_text())["alignments"]
    assert alignments and all(tokenizer.unk_id() not in tokenizer.encode(word.strip()) for word, _, _ in alignments)
    run = yaml.safe_load(kit["train_yaml"].read_text())
    assert run["model"]["weights"] == str(kit["weights"]) and run["model"]["lm_kwargs"] == str(kit["lm_kwargs"])


def test_babble_is_deterministic_and_speech_like():
    a, b = babble(3.0, np.random.default_rng(1)), babble(3.0, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.dtype == np.float32 and len(a) == 72000
    assert 0.2 <= np.abs(a).max() <= 0.6 and 0.1 < np.mean(np.abs(a) < 1e-4) < 0.7  # loud syllables and silent gaps


def test_a_folder_holding_other_files_is_refused_and_kept(tmp_path, capsys):
    """The kit would replace same-named files (config.json, data/, ...): a folder it did not write is refused, untouched."""
    (tmp_path / "config.json").write_text("mine")
    assert main(["moshi-kit", str(tmp_path)]) != 0
    assert "holds files no kit wrote (config.json" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"] and (tmp_path / "config.json").read_text() == "mine"


@pytest.mark.integration
def test_the_walk_through_moshi_kit_prints_runs_offline(tmp_path, monkeypatch, capsys):
    """The commands `ittt moshi-kit` prints (docs/moshi.md's walk-through), each run as printed
    (the training cut to 4 steps): encode both splits, train, infer and evaluate the trained model,
    on nothing but the kit's files. moshi-serve, which runs until stopped, is tested in test_serve."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    kit = tmp_path / "kit"
    assert main(["moshi-kit", str(kit)]) == 0
    commands = [shlex.split(line)[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("  ittt ")]
    assert [c[0] for c in commands] == ["moshi-encode", "moshi-encode", "train", "moshi-infer", "moshi-eval", "moshi-serve"]
    for args in commands[:-1]:
        assert main(args + (["--train.max_steps", "4", "--train.eval_steps", "2", "--train.save_steps", "4"] if args[0] == "train" else [])) == 0, args
    report = json.loads((kit / "moshi.json").read_text())
    assert report["audio_seconds"] == 10.0 and report["updates"] == {"0": report["steps"] // 8}  # layer 0, chunks of 8 steps
    results = json.loads((kit / "moshi-eval" / "results.json").read_text())["models"]
    assert sorted(results) == ["base", "ttt"] and all(np.isfinite(results[m]["buckets"]["text"]["loss"][0]) for m in results)
    assert main(["moshi-kit", str(kit)]) == 0  # a kit's own folder, runs and all, takes a new kit
