"""moshi-finetune's YAML read unchanged by `ittt train`: every key mapped (docs/moshi.md's table),
unknown keys refused by name, model files found as moshi's loaders find them (a Hugging Face repo
in huggingface_hub's cache, offline), and LoRA adapters saved in moshi-finetune's layout."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("moshi")
from safetensors.torch import load_file, save_file  # noqa: E402

from inplace_ttt.cli import main  # noqa: E402
from inplace_ttt.train.moshi import MoshiRunConfig  # noqa: E402
from inplace_ttt.train.moshi_finetune import KEYS  # noqa: E402
from inplace_ttt.train.run import load_run_config  # noqa: E402
from tests.tiny_moshi import TINY, hub_snapshot, random_codes, tiny_lm, write_tiny_checkpoint  # noqa: E402
from tests.train.conftest import losses  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "moshi.md"
REPO = "kyutai/tiny-moshi-test"


def example(tmp_path, **changes) -> Path:
    """moshi-finetune's example recipe (its example/moshi_7B.yaml's keys and values), with a manifest."""
    (tmp_path / "train.jsonl").write_text(json.dumps({"path": "a.wav", "duration": 10.0}) + "\n")
    config = {
        "data": {"eval_data": "", "shuffle": True, "train_data": str(tmp_path / "train.jsonl")},
        "moshi_paths": {"hf_repo_id": "kyutai/moshiko-pytorch-bf16"},
        "full_finetuning": False,
        "lora": {"enable": True, "rank": 128, "scaling": 2.0, "ft_embed": False},
        "first_codebook_weight_multiplier": 100.0,
        "text_padding_weight": 0.5,
        "duration_sec": 100,
        "batch_size": 16,
        "max_steps": 2000,
        "gradient_checkpointing": True,
        "optim": {"lr": "2e-6", "weight_decay": 0.1, "pct_start": 0.05},  # YAML reads 2e-6 as a string
        "seed": 0,
        "log_freq": 1,
        "eval_freq": 100,
        "do_eval": False,
        "do_ckpt": True,
        "ckpt_freq": 100,
        "save_adapters": True,
        "run_dir": str(tmp_path / "run"),
    }
    for key, value in changes.items():
        section, _, leaf = key.rpartition("__")
        (config.setdefault(section, {}) if section else config)[leaf] = value
    path = tmp_path / "moshi_7B.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_example_recipe_reads_as_a_moshi_run(tmp_path):
    config = load_run_config(example(tmp_path))
    assert isinstance(config, MoshiRunConfig)
    assert config.model.hf_repo == "kyutai/moshiko-pytorch-bf16" and config.model.dtype == "bfloat16"  # param_dtype's default
    assert config.data.train == [str(tmp_path / "train.jsonl")] and config.data.eval == [] and config.data.row_length == 1250
    t = config.train
    assert (t.mode, t.learning_rate, t.weight_decay, t.warmup_ratio, t.adam_beta2) == ("lora", 2e-6, 0.1, 0.05, 0.95)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.max_steps, t.max_grad_norm) == (16, 1, 2000, 1.0)
    assert (t.first_codebook_weight, t.text_padding_weight, t.logging_steps, t.save_steps, t.save_total_limit) == (100.0, 0.5, 1, 100, 3)
    assert t.output_dir == str(tmp_path / "run") and t.seed == 0 and t.train_sampling_strategy == "random" and t.eval_strategy == "no"
    assert (config.lora.r, config.lora.alpha, config.lora.target_modules, config.lora.save_adapters) == (128, 256.0, ["all-linear"], True)
    assert config.ttt is not None and config.ttt.target_source == "token_embeddings"  # no ttt section: Moshi's TTT defaults
    assert load_run_config(example(tmp_path), ["--ttt", "null"]).ttt is None  # the baseline: moshi-finetune's run as it is
    chunked = load_run_config(example(tmp_path, ttt={"chunk_size": 64}, ckpt_freq=0, full_finetuning=True, lora__enable=False))
    assert chunked.ttt.chunk_size == 64 and chunked.train.mode == "full" and chunked.train.save_strategy == "no" and not chunked.lora.save_adapters


def test_every_key_has_its_row_in_the_docs_table():
    rows = {m.group(1): (m.group(2).strip(), m.group(3).strip()) for m in re.finditer(r"^\| `([a-z_.]+)` \| `([^`]*)` \| ([^|]+) \|$", DOCS.read_text(), re.M)}
    for key in KEYS:
        assert key.name in rows, f"docs/moshi.md has no row for moshi-finetune's {key.name}"
        assert rows[key.name] == (json.dumps(key.default), key.ours), key.name


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"optim__momentum": 0.9}, r"unknown moshi-finetune key\(s\) \['optim.momentum'\]; valid keys: .*'optim.lr'"),
        ({"learning_rate": 1e-3}, r"unknown moshi-finetune key\(s\) \['learning_rate'\]"),
        ({"batch_size": "many"}, r"batch_size: expected int, got 'many'"),
        ({"param_dtype": "float16"}, r"param_dtype must be 'float32' or 'bfloat16'; got 'float16'"),
        ({"lora__enable": True, "full_finetuning": True}, r"full_finetuning: true .* lora.enable must be false"),
        ({"overwrite_run_dir": True}, r"overwrite_run_dir must be false"),
        ({"data__train_data": "a.jsonl:1,b.jsonl:2"}, r"data.train_data: no such file or folder: a.jsonl"),
        ({"do_eval": True}, r"do_eval: true needs data.eval_data"),
        ({"lora__enable": False, "ttt": None}, r"train.mode 'ttt_only' .* ttt: null has none"),
    ],
)
def test_bad_keys_and_values_are_refused_by_name(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(example(tmp_path, **changes))


def test_unequal_sampling_weights_are_refused(tmp_path):
    path = example(tmp_path)
    (tmp_path / "b.jsonl").write_text((tmp_path / "train.jsonl").read_text())
    with pytest.raises(ValueError, match=r"data.train_data: sampling weights \[1.0, 2.0\] differ"):
        load_run_config(path, ["--data.train_data", f"{tmp_path / 'train.jsonl'}:1,{tmp_path / 'b.jsonl'}:2"])


def fake_hub(tmp_path) -> Path:
    """huggingface_hub's cache holding a snapshot of a Moshi repo: moshi's config.json naming its
    files, a tiny LMModel's weights (Mimi and the tokenizer are read only to encode audio)."""
    write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    files = {"tiny.safetensors": tmp_path / "tiny.safetensors", "mimi.safetensors": b"", "tok.model": b""}
    hub_snapshot(tmp_path / "hub", REPO, files, {**TINY, "moshi_name": "tiny.safetensors", "mimi_name": "mimi.safetensors", "tokenizer_name": "tok.model"})
    return tmp_path / "hub"


def codes_run(tmp_path, **changes) -> Path:
    """A moshi-finetune config over three conversations' codes files (ours: no audio to encode)."""
    data = tmp_path / "codes"
    data.mkdir(parents=True, exist_ok=True)
    lm = tiny_lm()
    for i, T in enumerate([40, 33, 16]):
        save_file({"codes": random_codes(lm, 1, T)[0].to(torch.int32)}, str(data / f"conv{i}.safetensors"))
    sources = ",".join(str(data / f"conv{i}.safetensors") for i in range(3))
    settings = dict(
        data__train_data=sources,
        moshi_paths__hf_repo_id=REPO,
        duration_sec=1.28,  # 16 steps
        batch_size=2,
        max_steps=2,
        param_dtype="float32",
        gradient_checkpointing=False,
        optim__lr=1e-2,
        lora__rank=2,
        lora__scaling=1.5,
        ttt={"layers": [0, 2], "chunk_size": 4},
    )
    return example(tmp_path, **{**settings, **changes})


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(fake_hub(tmp_path)))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)


@pytest.mark.integration
def test_lora_adapters_saved_as_moshi_finetune_does_reproduce_the_merged_model(tmp_path, offline_hub):
    """The same run twice (a repo id resolved offline from huggingface_hub's cache): with
    save_adapters, final/ holds moshi's lora.safetensors + config.json (+ ttt.safetensors), which
    moshi's own loader folds into the base weights; without, the merged weights. Both give the
    trained model's outputs; neither is the base model's."""
    from inplace_ttt.families.moshi import load_moshi

    finals = {}
    for adapters in (True, False):
        path = codes_run(tmp_path / str(adapters), save_adapters=adapters)
        assert main(["train", str(path)]) == 0, adapters
        finals[adapters] = tmp_path / str(adapters) / "run" / "final"
    assert losses(tmp_path / "True" / "run") == losses(tmp_path / "False" / "run")
    assert sorted(p.name for p in finals[True].iterdir()) == ["config.json", "lora.safetensors", "ttt.safetensors"]
    assert sorted(p.name for p in finals[False].iterdir()) == ["model.safetensors", "ttt.safetensors"]
    adapters = load_file(str(finals[True] / "lora.safetensors"))
    assert "transformer.layers.0.gating.linear_in.lora_A.weight" in adapters and "text_linear.lora_B.weight" in adapters
    settings = json.loads((finals[True] / "config.json").read_text())
    assert (settings["lora"], settings["lora_rank"], settings["lora_scaling"]) == (True, 2, 1.5)
    base = next((tmp_path / "hub").rglob("tiny.safetensors"))
    folded = load_moshi(base, settings, ttt_file=finals[True] / "ttt.safetensors", lora_file=finals[True] / "lora.safetensors", dtype=torch.float32)
    merged = load_moshi(finals[False] / "model.safetensors", TINY, ttt_file=finals[False] / "ttt.safetensors", dtype=torch.float32)
    codes = random_codes(tiny_lm(), 2, 24)
    a, b = folded(codes), merged(codes)
    torch.testing.assert_close(a.text_logits.nan_to_num(), b.text_logits.nan_to_num(), rtol=0, atol=1e-5)  # W + s B A summed in two orders
    torch.testing.assert_close(a.logits.nan_to_num(), b.logits.nan_to_num(), rtol=0, atol=1e-5)
    plain = load_moshi(base, TINY, ttt_file=finals[True] / "ttt.safetensors", dtype=torch.float32)(codes)
    assert (plain.text_logits.nan_to_num() - a.text_logits.nan_to_num()).abs().max() > 1e-3  # the adapters trained


def test_a_repo_not_in_the_cache_offline_is_named(tmp_path, offline_hub):
    path = codes_run(tmp_path, moshi_paths__hf_repo_id="kyutai/not-cached")
    with pytest.raises(ValueError, match=r"model.hf_repo 'kyutai/not-cached': cannot resolve the model's files .*HF_HUB_CACHE"):
        from inplace_ttt.train.run import train

        train(load_run_config(path))
