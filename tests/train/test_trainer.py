"""`ittt train` end to end on a tiny model: modes, telemetry, checkpoints, resume, faults."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import inplace_ttt
from inplace_ttt.cli import main
from inplace_ttt.train.run_dir import COMPLETE, last_complete_checkpoint
from inplace_ttt.train.trainer import TTT_WEIGHTS
from tests.tiny_hf import tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


def edit(config_path, **sections):
    data = yaml.safe_load(config_path.read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    config_path.write_text(yaml.safe_dump(data))
    return config_path


def losses(run_dir):
    """Loss per step from metrics.jsonl (the last line wins when a resumed run logs a step again)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


def run_cli(*args, env=None):
    """`ittt` in a fresh process (what a user runs; also how a crash is simulated)."""
    cmd = [sys.executable, "-c", "import sys; from inplace_ttt.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


def train_dying_in_checkpoint(config, step: int):
    """`ittt train` in a process that dies while writing checkpoint-`step`: after its files, before its COMPLETE mark."""
    crash = (
        "import os, inplace_ttt.train.run_dir as t; real = t.write_atomic\n"
        "def write(path, text):\n"
        f"    if 'checkpoint-{step}' in str(path): os._exit(9)\n"
        "    real(path, text)\n"
        "t.write_atomic = write\n"
        "import sys; from inplace_ttt.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run([sys.executable, "-c", crash, "train", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_full_run_logs_telemetry_and_saves_every_weight(workspace, capsys):
    edit(workspace["config"], train={"report_to": ["tensorboard"]})
    assert main(["train", str(workspace["config"])]) == 0
    assert "PASS  TTT gradients" in capsys.readouterr().out  # the doctor ran on the first batch
    run = workspace["run"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = rows[1]
    for key in ("loss", "grad_norm", "ttt/layer0/grad_conv", "ttt/layer0/grad_target", "ttt/layer2/grad_down",
                "ttt/layer0/fast_ratio", "ttt/layer2/clipped_share"):
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


def test_lora_checkpoints_hold_the_ttt_weights_and_resume_restores_them(workspace):
    edit(workspace["config"], train={"mode": "lora", "max_steps": 4, "save_steps": 2}, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    assert main(["train", str(workspace["config"])]) == 0
    ckpt = workspace["run"] / "checkpoint-2"
    saved = load_file(ckpt / TTT_WEIGHTS)
    assert sorted(saved) == sorted(
        f"base_model.model.model.layers.{i}.mlp.ttt.{w}" for i in (0, 2) for w in ("conv_weight", "target_weight")
    )
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


def test_killed_run_resumes_from_its_last_complete_checkpoint_exactly(workspace):
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
    assert run_cli("train", str(config), "--resume").returncode == 0
    assert not (run / "checkpoint-4").exists() or (run / "checkpoint-4" / COMPLETE).is_file()
    assert losses(run) == losses(reference)  # the uninterrupted run's losses, exactly


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
    assert re.fullmatch(r"ittt train: error: model: .*base/model.safetensors is not a readable safetensors file \(.*\): it is empty, cut short or corrupt", last), last
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
    from inplace_ttt.adapters.hf import checkpoint_settings

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
    edit(workspace["config"], train={"max_steps": 2, "save_steps": 100, "gradient_accumulation_steps": 2,
                                     "gradient_checkpointing": True, "bf16": "true", "per_device_train_batch_size": 1})
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
