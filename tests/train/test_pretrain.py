"""`ittt pretrain`: tokenizer training, config validation, and a tiny run on CPU that learns."""

import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, MistralForCausalLM

import inplace_ttt
from inplace_ttt.cli import main
from inplace_ttt.train.config import load_config
from inplace_ttt.train.pretrain import SUMMARY, ArchitectureConfig, PretrainConfig, build_model, train_tokenizer
from tests.train.conftest import write_docs

TINY_MODEL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
}


@pytest.fixture
def run_config(tmp_path):
    config = {
        "model": TINY_MODEL,
        "tokenizer": {"vocab_size": 300},
        "data": {"train": [str(write_docs(tmp_path / "train", 12))], "eval": [str(write_docs(tmp_path / "eval", 3, seed=1))], "row_length": 64},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "max_steps": 30,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 1000,
            "report_to": [],
            "seed": 0,
        },
    }
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tokenizer_is_byte_level_bpe_with_special_tokens(tmp_path):
    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog. " * 20, "a second document, shorter."], 300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    unseen = "Zürich ∮ 🙂\ttab\n\nnew paragraph  two spaces"
    ids = tok(unseen, add_special_tokens=False).input_ids
    assert tok.decode(ids) == unseen  # bytes never seen in training still encode
    assert len(tok("the quick brown fox", add_special_tokens=False).input_ids) < len("the quick brown fox")  # merges learned
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(unseen, add_special_tokens=False).input_ids == ids and reloaded.eos_token == "</s>"


def test_model_is_a_llama_with_gated_silu_sized_by_the_tokenizer():
    tok = train_tokenizer(["some text to learn merges from " * 10], 300)
    model = build_model(ArchitectureConfig(**TINY_MODEL), tok)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_act == "silu" and model.config.vocab_size == len(tok)
    assert model.config.num_key_value_heads == 1 and model.config.max_position_embeddings == 128
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight


def test_pretrain_on_cpu_lowers_the_loss_and_saves_a_loadable_model(run_config, tmp_path):
    assert main(["pretrain", str(run_config)]) == 0
    final = tmp_path / "run" / "final"
    summary = json.loads((final / SUMMARY).read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    uniform = math.log(summary["vocab_size"])
    assert abs(losses[0] - uniform) < 0.5  # an untrained model is near uniform...
    assert summary["final_train_loss"] < losses[0] - 1.0  # ...and training lowers the loss
    assert summary["heldout_loss"] < uniform - 1.0  # on documents it never saw too
    assert summary["steps"] == 30 and summary["tokens_seen"] == 30 * 4 * 64
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.num_parameters() == summary["parameters"] and len(tok) == summary["vocab_size"] == 300
    assert model.config.use_cache  # switched off for training only
    # the saved model gives the held-out loss the summary reports (fp32 both)
    ids = torch.tensor([tok((tmp_path / "eval" / "doc000.txt").read_text(), add_special_tokens=False).input_ids[:64]])
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() < uniform - 1.0


def test_sliding_window_builds_transformers_mistral_with_that_window():
    tok = train_tokenizer(["some text to learn merges from " * 10], 300)
    model = build_model(ArchitectureConfig(**TINY_MODEL, sliding_window=16), tok)
    assert isinstance(model, MistralForCausalLM) and model.config.sliding_window == 16
    ids = torch.randint(3, len(tok), (1, 60), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 0] += 1
    with torch.no_grad():  # one layer: position 20 and later no longer see token 0
        a, b = (model(input_ids=x, use_cache=False).logits[0] for x in (ids, changed))
    assert torch.equal(a[16:], b[16:]) and not torch.equal(a[:16], b[:16])


def test_ttt_from_step_zero_trains_and_loads_like_a_converted_model(run_config, tmp_path, capsys):
    overrides = [
        "--ttt.layers",
        "[0]",
        "--ttt.chunk_size",
        "16",
        "--ttt.ttt_lr",
        "1.0",
        "--model.sliding_window",
        "8",
        "--train.ttt_params_learning_rate",
        "3e-3",
        "--train.max_steps",
        "8",
    ]
    assert main(["pretrain", str(run_config), *overrides]) == 0
    assert "doctor on the first batch" in capsys.readouterr().out  # the doctor of `ittt train`, on a model with TTT layers
    final = tmp_path / "run" / "final"
    model = inplace_ttt.from_pretrained(final)
    ((idx, layer),) = inplace_ttt.ttt_layers(model)
    assert idx == 0 and layer.chunk_size == 16 and model.config.sliding_window == 8
    assert layer.ttt.conv_weight.abs().sum() > 0  # trained from zero
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("ttt/layer0/grad_conv" in row for row in rows)  # the telemetry of `ittt train`
    summary = json.loads((final / SUMMARY).read_text())
    assert summary["parameters"] == model.num_parameters() and summary["steps"] == 8


def test_init_from_copies_the_weights_of_a_model_of_the_same_shape(run_config, tmp_path):
    tok = train_tokenizer(["some text to learn merges from " * 10], 300)
    donor = build_model(ArchitectureConfig(**TINY_MODEL), tok)
    donor.save_pretrained(tmp_path / "donor")
    model = build_model(ArchitectureConfig(**TINY_MODEL, sliding_window=8, init_from=str(tmp_path / "donor")), tok)
    for (name, p), (_, q) in zip(donor.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="does not match the model section"):
        build_model(ArchitectureConfig(**{**TINY_MODEL, "hidden_size": 64}, init_from=str(tmp_path / "donor")), tok)


def test_pretrain_refuses_to_overwrite_a_run(run_config, tmp_path, capsys):
    (tmp_path / "run" / "final").mkdir(parents=True)
    assert main(["pretrain", str(run_config)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_pretrain_is_ittt_train_of_the_scratch_family(run_config, tmp_path, capsys):
    """The same run folder as `ittt train`: nothing written for a refused run, a config.yaml, the rows'
    fingerprint, a resumable run whose tokenizer comes from its checkpoint, the training record."""
    assert main(["pretrain", str(run_config), "--data.train", f"[{tmp_path / 'nothing'}]"]) == 2
    assert "data: no such file or folder" in capsys.readouterr().err and not (tmp_path / "run").exists()
    edit = ["--train.max_steps", "4", "--train.save_steps", "2", "--ttt.layers", "[0]", "--ttt.chunk_size", "16"]
    assert main(["train", str(run_config), "--model_type", "scratch", *edit]) == 0
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["model_type"] == "scratch" and (run / "data.sha256").is_file()
    assert not (run / "tokenizer").exists() and (run / "checkpoint-2" / "tokenizer.json").is_file()
    assert json.loads((run / "final" / "config.json").read_text())["inplace_ttt"]["training"] == [{"mode": "full", "steps": 4}]
    first = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    for name in ("final", "checkpoint-4"):  # as if killed after checkpoint-2
        shutil.rmtree(run / name)
    assert main(["pretrain", str(run_config), *edit, "--resume"]) == 0  # the tokenizer of checkpoint-2, the same rows
    again = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert again == first


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--model.num_hidden_layer", "2"], "valid keys here"),
        (["--model.hidden_size", "31"], "multiple of model.num_attention_heads"),
        (["--model.num_key_value_heads", "3"], "multiple of model.num_key_value_heads"),
        (["--data.row_length", "256"], "exceeds model.max_position_embeddings"),
        (["--tokenizer.vocab_size", "100"], "tokenizer.vocab_size must be >= 300"),
        (["--model.hidden_size", "big"], "model.hidden_size: expected int"),
        (["--model.sliding_window", "0"], "model.sliding_window must be None"),
        (["--ttt.chunk_size", "0"], "TTTConfig.chunk_size"),
    ],
)
def test_bad_config_names_the_field(run_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(run_config, overrides, schema=PretrainConfig)


def test_the_shipped_recipe_config_is_valid():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "pretrain-tiny.yaml", schema=PretrainConfig)
    assert config.model.sliding_window == 128 < config.data.row_length and config.model.max_position_embeddings >= 4096
    assert config.tokenizer.vocab_size == 4096 and config.ttt is None
