"""`ittt train` end to end on a tiny model: modes, telemetry, checkpoints, resume, faults."""

import contextlib
import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import inplace_ttt
from inplace_ttt.cli import main
from inplace_ttt.train.run_dir import COMPLETE, last_complete_checkpoint
from inplace_ttt.train.trainer import LORA_TTT_WEIGHTS
from tests.tiny_hf import tiny_tokenizer
from tests.train.conftest import edit, losses, run_cli, train_dying_in_checkpoint


def test_full_run_logs_telemetry_and_saves_every_weight(workspace, capsys):
    edit(workspace["config"], train={"report_to": ["tensorboard"]})
    assert main(["train", str(workspace["config"])]) == 0
    printed = capsys.readouterr()
    assert "PASS  TTT gradients" in printed.out  # the doctor ran on the first batch
    # one readable line per log; the per-layer numbers go to the files only
    lines = [line for line in (printed.out + printed.err).splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines if " loss " in line] == [f"{s}/6" for s in range(1, 7)]
    assert all(len(line) < 250 and "ttt/layer" not in line for line in lines), lines
    assert "| ttt: grad_share" in lines[0] and "train_runtime" in lines[-1], lines
    run = workspace["run"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = rows[1]
    for key in (
        "loss",
        "grad_norm",
        "ttt/layer0/grad_conv",
        "ttt/layer0/grad_target",
        "ttt/layer2/grad_down",
        "ttt/layer0/fast_ratio",
        "ttt/layer2/clipped_share",
    ):
        assert key in logged, key
    assert logged["ttt/layer0/grad_conv"] > 0 and logged["ttt/layer0/fast_ratio"] > 0
    assert list(run.rglob("events.out.tfevents*"))  # TensorBoard
    assert all((run / f"checkpoint-{s}" / COMPLETE).is_file() for s in (2, 4, 6))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 6
    final = inplace_ttt.from_pretrained(run / "final")
    for _, layer in inplace_ttt.ttt_layers(final):
        assert layer.ttt.conv_weight.abs().sum() > 0  # trained, and in the checkpoint


def test_ttt_only_trains_only_ttt_parameters(workspace):
    edit(workspace["config"], train={"mode": "ttt_only", "max_steps": 3, "save_steps": 100})
    assert main(["train", str(workspace["config"])]) == 0
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(workspace["model"]).named_parameters())
    final = inplace_ttt.from_pretrained(workspace["run"] / "final")
    for name, p in final.named_parameters():
        if ".ttt." in name:
            continue
        changed = not torch.equal(p, base[name])
        assert changed == name.endswith(("layers.0.mlp.down_proj.weight", "layers.2.mlp.down_proj.weight")), name


@pytest.mark.integration
def test_lora_checkpoints_hold_the_ttt_weights_and_resume_restores_them(workspace):
    edit(workspace["config"], train={"mode": "lora", "max_steps": 4, "save_steps": 2}, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    assert main(["train", str(workspace["config"])]) == 0
    ckpt = workspace["run"] / "checkpoint-2"
    saved = load_file(ckpt / LORA_TTT_WEIGHTS)
    assert sorted(saved) == sorted(f"base_model.model.model.layers.{i}.mlp.ttt.{w}" for i in (0, 2) for w in ("conv_weight", "target_weight"))
    assert all(t.abs().sum() > 0 for n, t in saved.items() if "conv" in n)
    final = inplace_ttt.from_pretrained(workspace["run"] / "final")  # LoRA merged, TTT weights in
    assert all(layer.ttt.conv_weight.abs().sum() > 0 for _, layer in inplace_ttt.ttt_layers(final))
    # resuming from checkpoint-2 continues with the same TTT weights: the resumed losses equal the first run's
    first = losses(workspace["run"])
    (workspace["run"] / "final").rename(workspace["root"] / "final-1")
    shutil.rmtree(workspace["run"] / "checkpoint-4")
    assert main(["train", str(workspace["config"]), "--resume"]) == 0
    again = losses(workspace["run"])
    assert again[3] == first[3] and again[4] == first[4]


def test_separate_learning_rate_for_ttt_parameters(workspace):
    from inplace_ttt.train.run import load_run_config, train
    from inplace_ttt.train.trainer import TTTTrainer

    seen = {}
    real = TTTTrainer.create_optimizer

    def spy(self, model=None):
        opt = real(self, model)
        seen["groups"] = [(g["lr"], len(g["params"])) for g in opt.param_groups]
        return opt

    TTTTrainer.create_optimizer = spy
    try:
        edit(workspace["config"], train={"max_steps": 1})
        train(load_run_config(workspace["config"]))
    finally:
        TTTTrainer.create_optimizer = real
    lrs = {lr for lr, _ in seen["groups"]}
    assert lrs == {1e-3, 5e-3}
    assert sum(n for lr, n in seen["groups"] if lr == 5e-3) == 4  # conv + W_target of two layers


@pytest.mark.integration
def test_killed_run_resumes_from_its_last_complete_checkpoint_exactly(workspace):
    from tests.tiny_hf import tiny

    tiny(tie_word_embeddings=True).save_pretrained(workspace["model"])  # a tied head is one weight: not "missing" on resume
    config = workspace["config"]
    reference = workspace["root"] / "reference"
    edit(config, train={"output_dir": str(reference)})
    assert run_cli("train", str(config)).returncode == 0
    edit(config, train={"output_dir": str(workspace["run"])})
    died = train_dying_in_checkpoint(config, 4)
    assert died.returncode == 9
    run = workspace["run"]
    assert (run / "checkpoint-4").is_dir() and not (run / "checkpoint-4" / COMPLETE).exists()
    assert last_complete_checkpoint(run) == run / "checkpoint-2"
    loaded = inplace_ttt.from_pretrained(run / "checkpoint-2")  # loadable as it is
    assert len(dict(inplace_ttt.ttt_layers(loaded))) == 2
    again = run_cli("train", str(config))
    assert again.returncode == 2 and "already holds a run: pass --resume" in again.stderr
    resumed = run_cli("train", str(config), "--resume")
    assert resumed.returncode == 0 and "missing keys" not in resumed.stderr.lower(), resumed.stderr
    assert not (run / "checkpoint-4").exists() or (run / "checkpoint-4" / COMPLETE).is_file()
    assert losses(run) == losses(reference)  # the uninterrupted run's losses, exactly
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, 7))  # steps 3 and 4, logged before the kill, once each


def test_doctor_stops_a_broken_run(workspace, capsys):
    edit(workspace["config"], ttt={"clip_tau": 1e-5})
    assert main(["train", str(workspace["config"])]) == 2
    err = capsys.readouterr().err
    assert "doctor found problems on the first batch" in err and "FAIL  no clipping in training" in err
    assert not list(workspace["run"].glob("checkpoint-*"))
    edit(workspace["config"], train={"doctor": False, "max_steps": 1})
    assert main(["train", str(workspace["config"])]) == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"train": ["/nonexistent/docs"]}}, "data: no such file or folder: /nonexistent/docs"),
        ({"data": {"row_length": 12}}, r"data.row_length=12 is shorter than two TTT chunks \(chunk_size 8\)"),
        ({"train": {"mode": "fast"}}, r"train.mode must be one of"),
        ({"model": "/nonexistent/model"}, "model: no such folder: /nonexistent/model"),
        ({"train": {"per_device_train_batch_size": 10**7}}, r"the logits and their gradient alone take 231\.3 GiB a step, more than"),
    ],
)
def test_bad_runs_get_one_clear_message(workspace, capsys, change, message):
    edit(workspace["config"], **change)
    assert main(["train", str(workspace["config"])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ittt train: error:") and re.search(message, last), last
    assert not workspace["run"].exists()


def test_a_truncated_model_is_named(workspace, capsys):
    weights = workspace["model"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["train", str(workspace["config"])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"ittt train: error: model: .*base/model.safetensors is not a readable safetensors file \(.*\): it is empty, cut short or corrupt", last
    ), last
    assert not workspace["run"].exists()


def test_a_trained_checkpoint_goes_on_with_its_own_ttt_settings(workspace, capsys):
    """An In-Place TTT checkpoint as `model`: the run's ttt section once was ignored while config.yaml recorded it."""
    edit(workspace["config"], train={"max_steps": 2})
    assert main(["train", str(workspace["config"])]) == 0
    second = workspace["root"] / "run2"
    edit(workspace["config"], model=str(workspace["run"] / "final"), train={"output_dir": str(second)}, ttt={"chunk_size": 4, "ttt_lr": 0.5})
    assert main(["train", str(workspace["config"])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(
        "is a trained In-Place TTT checkpoint, which goes on with its own TTT settings, but the run's ttt section differs: "
        "ttt.chunk_size 4 (checkpoint: 8). Leave those keys out of the ttt section, or give the checkpoint's values"
    ), last
    assert not second.exists()
    edit(workspace["config"], ttt={"chunk_size": 8, "ttt_lr": 0.5, "layers": [0, 2]})  # the same values (layers as indices): accepted
    assert main(["train", str(workspace["config"])]) == 0
    from inplace_ttt.families.hf import checkpoint_settings

    saved = checkpoint_settings(workspace["run"] / "final")[0]
    assert yaml.safe_load((second / "config.yaml").read_text())["ttt"] == saved.to_dict()  # what the run trained with
    data = yaml.safe_load(workspace["config"].read_text())
    del data["ttt"]  # no section: the checkpoint's settings, recorded as such
    workspace["config"].write_text(yaml.safe_dump(data))
    edit(workspace["config"], train={"output_dir": str(workspace["root"] / "run3")})
    assert main(["train", str(workspace["config"])]) == 0
    assert yaml.safe_load((workspace["root"] / "run3" / "config.yaml").read_text())["ttt"]["chunk_size"] == 8  # not TTTConfig's default 1024


def test_empty_data_and_tokenizer_mismatch(workspace, capsys):
    empty = workspace["root"] / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n")
    edit(workspace["config"], data={"train": [str(empty)]})
    assert main(["train", str(workspace["config"])]) == 2
    assert "holds no non-empty documents" in capsys.readouterr().err
    big = workspace["root"] / "bigtok"
    tiny_tokenizer([f"x{i}" for i in range(200)]).save_pretrained(big)
    (workspace["root"] / "train2").mkdir()
    (workspace["root"] / "train2" / "a.txt").write_text(" ".join(f"x{i}" for i in range(199, 100, -1)))
    edit(workspace["config"], tokenizer=str(big), data={"train": [str(workspace["root"] / "train2")]})
    assert main(["train", str(workspace["config"])]) == 2
    assert "tokenizer mismatch: the data has token id" in capsys.readouterr().err


def test_a_non_gated_model_is_refused(workspace, capsys):
    from transformers import AutoModelForCausalLM, PhiConfig

    phi = workspace["root"] / "phi"
    AutoModelForCausalLM.from_config(
        PhiConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ).save_pretrained(phi)
    tiny_tokenizer(["a"]).save_pretrained(phi)
    edit(workspace["config"], model=str(phi))
    assert main(["train", str(workspace["config"])]) == 2
    assert "is not a gated MLP" in capsys.readouterr().err


def test_accumulation_checkpointing_and_bf16_autocast(workspace):
    """The engine's features compose with TTT: activation checkpointing, accumulation, bf16 autocast."""
    edit(
        workspace["config"],
        train={
            "max_steps": 2,
            "save_steps": 100,
            "gradient_accumulation_steps": 2,
            "gradient_checkpointing": True,
            "bf16": "true",
            "per_device_train_batch_size": 1,
        },
    )
    assert main(["train", str(workspace["config"])]) == 0
    rows = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert len(logged) == 2 and all(r["ttt/layer0/grad_conv"] > 0 for r in logged)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged)


def test_ttt_null_trains_the_plain_model_as_the_fair_baseline(workspace):
    edit(workspace["config"], ttt=None, train={"max_steps": 3, "save_steps": 100})
    assert main(["train", str(workspace["config"])]) == 0
    final = workspace["run"] / "final"
    assert "inplace_ttt" not in json.loads((final / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(workspace["model"])
    assert list(inplace_ttt.ttt_layers(trained)) == []
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(start.named_parameters())[n])]
    assert any(".mlp.down_proj." in n for n in moved) and any("self_attn" in n for n in moved)


def test_ttt_null_refuses_an_in_place_ttt_checkpoint(workspace, capsys):
    assert main(["train", str(workspace["config"])]) == 0
    edit(workspace["config"], model=str(workspace["run"] / "final"), ttt=None, train={"output_dir": str(workspace["root"] / "run2")})
    assert main(["train", str(workspace["config"])]) == 2
    assert "is an In-Place TTT checkpoint" in capsys.readouterr().err


def test_clip_groups_clips_the_ttt_parameters_on_their_own():
    from inplace_ttt.train.trainer import clip_groups

    module = torch.nn.ModuleDict({"mlp": torch.nn.ModuleDict({"ttt": torch.nn.Linear(3, 4)}), "attn": torch.nn.Linear(2, 5)})
    grads = {n: torch.randn(p.shape) * (100.0 if ".ttt." in n else 0.1) for n, p in module.named_parameters()}
    for n, p in module.named_parameters():
        p.grad = grads[n].clone()
    ttt_norm, other_norm = clip_groups(module.named_parameters(), 1.0, 2.0)
    expect = {flag: sum(float(g.pow(2).sum()) for n, g in grads.items() if (".ttt." in n) == flag) ** 0.5 for flag in (True, False)}
    assert ttt_norm == pytest.approx(expect[True], rel=1e-6) and other_norm == pytest.approx(expect[False], rel=1e-6)
    after = {flag: sum(float(p.grad.pow(2).sum()) for n, p in module.named_parameters() if (".ttt." in n) == flag) ** 0.5 for flag in (True, False)}
    assert after[True] == pytest.approx(1.0, rel=1e-5)  # clipped to its own limit
    assert after[False] == pytest.approx(expect[False], rel=1e-6)  # below its limit: untouched, not scaled by the TTT norm
    for n, p in module.named_parameters():  # clipping scales, it never turns a gradient
        assert torch.allclose(p.grad / p.grad.norm(), grads[n] / grads[n].norm(), atol=1e-6)


def test_ttt_gradient_clipping_of_its_own_and_what_clipping_did_are_logged(workspace):
    edit(workspace["config"], train={"max_steps": 2, "save_steps": 100, "ttt_params_max_grad_norm": 0.05, "max_grad_norm": 1.0})
    assert main(["train", str(workspace["config"])]) == 0
    logged = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    for row in logged:
        ttt = row["ttt/grad_norm"]
        other = (row["grad_norm"] ** 2 - ttt**2) ** 0.5  # the Trainer logs the global norm before clipping
        assert row["ttt/clip_scale"] == pytest.approx(min(1.0, 0.05 / ttt), rel=1e-4)
        assert row["clip_scale"] == pytest.approx(min(1.0, 1.0 / other), rel=1e-3)
        assert row["ttt/grad_share"] == pytest.approx(ttt**2 / row["grad_norm"] ** 2, rel=1e-4)


def test_without_global_clipping_the_telemetry_still_reads_the_gradients_and_the_ttt_group_is_clipped(workspace):
    """`max_grad_norm: 0` turns transformers' clipping off (it never calls it): the gradients are read
    before the optimizer step instead, and the TTT parameters still get their own clipping (torch scales
    by max_norm / (norm + 1e-6))."""
    edit(workspace["config"], train={"max_steps": 2, "save_steps": 100, "ttt_params_max_grad_norm": 1e-5, "max_grad_norm": 0})
    assert main(["train", str(workspace["config"])]) == 0
    logged = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(logged) == 2
    for row in logged:
        assert row["ttt/layer0/grad_conv"] > 0 and row["ttt/grad_norm"] > 1e-5
        assert row["ttt/clip_scale"] == pytest.approx(1e-5 / (row["ttt/grad_norm"] + 1e-6), rel=1e-4) and row["clip_scale"] == 1.0
        assert row["grad_norm"] >= row["ttt/grad_norm"]  # the Trainer's norm, before clipping


def test_the_old_name_of_the_lora_ttt_weights_file_still_reads():
    import inplace_ttt.train.trainer as trainer

    with pytest.warns(FutureWarning, match="TTT_WEIGHTS is deprecated; use LORA_TTT_WEIGHTS"):
        assert trainer.TTT_WEIGHTS == LORA_TTT_WEIGHTS == "ttt_weights.safetensors"


@pytest.mark.parametrize("warmup_steps, first", [(0, 2), (3, 3)])
def test_w_target_first_gets_gradient_after_the_first_step_that_moves_the_convolution(workspace, warmup_steps, first):
    """The convolution starts at zero, so W_target's gradient is zero until an optimizer step has moved it:
    step 2 without warmup, step 3 with warmup (transformers' warmup gives step 1 a learning rate of 0)."""
    edit(workspace["config"], train={"max_steps": 4, "save_steps": 100, "warmup_steps": warmup_steps, "eval_steps": None})
    assert main(["train", str(workspace["config"])]) == 0
    rows = {r["step"]: r for r in map(json.loads, (workspace["run"] / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    assert all(rows[s]["ttt/layer0/grad_conv"] > 0 for s in rows)  # from the first backward
    assert [s for s in sorted(rows) if rows[s]["ttt/layer0/grad_target"] > 0] == list(range(first, 5))
    assert (rows[1]["learning_rate"] == 0) == (warmup_steps > 0)


def _doctor_cli(model_dir, workspace, capsys):
    code = main(["doctor", str(model_dir), "--data", str(workspace["train"]), "--base", str(workspace["model"]), "--length", "24"])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("mode", ["ttt_only", "lora", "full"])
def test_the_doctor_knows_a_trained_checkpoint_and_checks_what_holds_for_it(workspace, capsys, mode):
    edit(workspace["config"], train={"mode": mode, "max_steps": 2, "save_steps": 2}, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    assert main(["train", str(workspace["config"])]) == 0
    capsys.readouterr()  # the run's own output (its first-batch doctor checks the fresh conversion's warm start)
    final = workspace["run"] / "final"
    entry = {"mode": mode, "steps": 2, **({"lora_target_modules": ["q_proj", "v_proj"]} if mode == "lora" else {})}
    assert json.loads((final / "config.json").read_text())["inplace_ttt"]["training"] == [entry]
    code, out = _doctor_cli(final, workspace, capsys)  # the warm-start check compared a trained model with its base: FAIL
    assert code == 0, out
    assert "PASS  frozen weights unchanged" in out and f"trained ({mode} 2 steps)" in out
    assert "PASS  TTT off reproduces the base" in out and "warm start" not in out
    if mode != "lora":  # a checkpoint of the run says so too (lora checkpoints hold the adapter only)
        saved = json.loads((workspace["run"] / "checkpoint-2" / "config.json").read_text())
        assert saved["inplace_ttt"]["training"] == [entry]
    if mode == "full":
        return
    # what the training froze is checked: a frozen weight changed after training is named
    model = inplace_ttt.from_pretrained(final)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.01)  # frozen in ttt_only (not a TTT layer) and lora
    model.save_pretrained(workspace["root"] / "tampered")
    tiny_tokenizer([]).save_pretrained(workspace["root"] / "tampered")
    code, out = _doctor_cli(workspace["root"] / "tampered", workspace, capsys)
    assert code == 1 and "FAIL  frozen weights unchanged" in out and "model.layers.1.mlp.down_proj.weight" in out, out


def test_a_trained_model_with_a_wrong_activation_fails_with_ttt_off(workspace, capsys):
    edit(workspace["config"], train={"mode": "ttt_only", "max_steps": 2, "save_steps": 100})
    assert main(["train", str(workspace["config"])]) == 0
    model = inplace_ttt.from_pretrained(workspace["run"] / "final")
    base = __import__("transformers").AutoModelForCausalLM.from_pretrained(workspace["model"])
    dict(inplace_ttt.ttt_layers(model))[0].act_fn = torch.nn.GELU()  # the seed's mistake, after training
    report = inplace_ttt.doctor(model.train(), torch.randint(3, 80, (2, 24)), base)
    assert sorted(report.failed()) == ["TTT off reproduces the base", "activation matches the original MLP"], str(report)


@pytest.mark.parametrize("use_cache", [True, False])
def test_saved_models_keep_the_users_use_cache(workspace, use_cache):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(workspace["model"])
    base.config.use_cache = use_cache
    base.save_pretrained(workspace["model"])
    edit(workspace["config"], train={"max_steps": 2, "save_steps": 2, "gradient_checkpointing": True})
    assert main(["train", str(workspace["config"])]) == 0  # the Trainer sets use_cache False for training
    for saved in ("checkpoint-2", "final"):
        assert json.loads((workspace["run"] / saved / "config.json").read_text())["use_cache"] is use_cache, saved
    model = inplace_ttt.from_pretrained(workspace["run"] / "final")
    out = model(input_ids=torch.randint(3, 80, (1, 10)))
    assert (out.past_key_values is not None) == use_cache


def test_training_a_gguf_checkpoint_gives_a_normal_float_checkpoint(workspace, capsys):
    from transformers import AutoModelForCausalLM

    from inplace_ttt.documents import read_documents
    from tests.tiny_gguf import byte_bpe_tokenizer, write_gguf
    from tests.tiny_hf import tiny

    texts = read_documents([str(workspace["train"])])
    tokenizer = byte_bpe_tokenizer(texts, 300)
    gguf_dir = workspace["root"] / "gguf"
    gguf_dir.mkdir()
    write_gguf(tiny(vocab_size=300, tie_word_embeddings=True), gguf_dir / "tiny.gguf", tokenizer=tokenizer)  # no other file
    edit(workspace["config"], model=str(gguf_dir), train={"mode": "ttt_only", "max_steps": 2, "save_steps": 100})
    assert main(["train", str(workspace["config"]), "--gguf-file", "tiny.gguf"]) == 0
    final = workspace["run"] / "final"
    saved = json.loads((final / "config.json").read_text())
    assert "quantization_config" not in saved and saved["tie_word_embeddings"] is True
    model = inplace_ttt.from_pretrained(final)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    base = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="tiny.gguf")
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)  # trained
    text = " ".join(texts[:2])
    assert tokenizer(text).input_ids == __import__("transformers").AutoTokenizer.from_pretrained(final)(text).input_ids
    args = ["doctor", str(final), "--data", str(workspace["train"]), "--base", str(gguf_dir), "--base-gguf-file", "tiny.gguf"]
    assert main([*args, "--length", "24"]) == 0, capsys.readouterr().out
    missing = main(["train", str(workspace["config"]), "--gguf-file", "nothing.gguf", "--train.output_dir", str(workspace["root"] / "run2")])
    assert missing == 2 and "gguf_file 'nothing.gguf'" in capsys.readouterr().err


STATE_RUNS = {
    # the TTT parameters barely move: the fast weights stay far below 1% of W_down
    "inert": dict(ttt={"ttt_lr": 0.01}, train={"ttt_params_learning_rate": 1e-7, "save_steps": 100}),
    # a huge eta and a fast TTT learning rate: the fast term outgrows W_down
    "harmful": dict(ttt={"ttt_lr": 1000.0}, train={"ttt_params_learning_rate": 0.3, "ttt_params_max_grad_norm": None, "max_grad_norm": 0, "save_steps": 100}),
    # the workspace's settings leave the tiny run inert (0.13% in 6 steps); eta 10 moves it past 1%
    "neither": dict(ttt={"ttt_lr": 10.0}, train={"save_steps": 100}),
}


@pytest.mark.parametrize("case", STATE_RUNS)
def test_the_run_says_once_when_ttt_is_inert_or_harmful(workspace, capsys, case):
    """Forced each way on a tiny model in 6 steps; a healthy run says neither."""
    edit(workspace["config"], **STATE_RUNS[case])
    with pytest.warns(RuntimeWarning) if case != "neither" else contextlib.nullcontext() as caught:
        assert main(["train", str(workspace["config"])]) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith("TTT is ")]
    rows = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines()]
    assert "ttt/loss_gain" in rows[0]  # measured at the first log, with TTT off on the same batch
    ratios = [r["ttt/layer0/fast_ratio"] for r in rows if "ttt/layer0/fast_ratio" in r]
    if case == "neither":
        assert said == [], said
        assert 0.01 < max(ratios) < 1.0
        return
    assert len(said) == 1 and said[0].startswith(f"TTT is {case}"), said
    assert any(str(w.message) == said[0] for w in caught)
    if case == "inert":
        assert "after 6 steps" in said[0] and "train.ttt_params_learning_rate (now 1e-07)" in said[0] and max(ratios) < 0.01
    else:
        assert "ttt.ttt_lr (now 1000)" in said[0] and "lower" in said[0]


def test_ddp_looks_for_unused_parameters_only_where_the_family_says_there_are(tmp_path):
    """transformers makes DDP search every step for parameters without a gradient in a module that is
    no PreTrainedModel; a family that knows (`RunParts.unreached`) decides, and a user's setting wins."""
    from inplace_ttt.train.config import TrainConfig
    from inplace_ttt.train.trainer import RunParts, trainer_arguments

    module = torch.nn.Linear(2, 2)

    def parts(unreached):
        return RunParts(module, {}, [], None, lambda rows: rows, lambda m, d: None, None, unreached=unreached)

    t = TrainConfig(output_dir=str(tmp_path))
    assert trainer_arguments(t, parts(lambda m: []), module).ddp_find_unused_parameters is False
    assert trainer_arguments(t, parts(lambda m: ["bias"]), module).ddp_find_unused_parameters is True
    assert trainer_arguments(t, parts(None), module).ddp_find_unused_parameters is None  # the Trainer's default
    assert (
        trainer_arguments(TrainConfig(output_dir=str(tmp_path), ddp_find_unused_parameters=True), parts(lambda m: []), module).ddp_find_unused_parameters
        is True
    )
