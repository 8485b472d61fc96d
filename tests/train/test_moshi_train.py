"""`ittt train` for Moshi: conversation files, moshi-finetune's loss, ttt_only and lora runs."""

import json
import re

import pytest
import torch

pytest.importorskip("moshi")
from safetensors.torch import load_file, save_file  # noqa: E402

from inplace_ttt import TTTConfig, convert  # noqa: E402
from inplace_ttt.cli import main  # noqa: E402
from inplace_ttt.families.moshi import load_moshi, training_loss  # noqa: E402
from inplace_ttt.families.moshi.codes import conversation_rows  # noqa: E402
from inplace_ttt.train.moshi import MoshiRunConfig  # noqa: E402
from inplace_ttt.train.run import load_run_config as load_config  # noqa: E402
from tests.tiny_moshi import TINY, random_codes, tiny_lm  # noqa: E402  (sets NO_TORCH_COMPILE)
from tests.train.conftest import edit, losses, moshi_run, run_cli, train_dying_in_checkpoint, write_run  # noqa: E402


def test_loss_is_moshi_finetunes_weighted_cross_entropy():
    lm = tiny_lm()
    codes = random_codes(lm, 2, 7)
    codes[0, 0, :3] = lm.text_padding_token_id
    codes[1, 0, 2] = lm.end_of_text_padding_id
    codes[1, :, 5:] = -1  # missing values: no loss
    parts = training_loss(lm, codes, first_codebook_weight=3.0, text_padding_weight=0.25)
    loss = parts["loss"]
    out = lm(codes)
    sums = {"text": [0.0, 0.0], "audio": [0.0, 0.0]}  # weighted CE sum, weight sum: a plain loop
    for b in range(2):
        for t in range(7):
            if out.text_mask[b, 0, t]:
                target = int(codes[b, 0, t])
                w = 0.25 if target in (lm.text_padding_token_id, lm.end_of_text_padding_id) else 1.0
                ce = -torch.log_softmax(out.text_logits[b, 0, t].double(), -1)[target]
                sums["text"][0] += w * float(ce)
                sums["text"][1] += w
            for k in range(lm.dep_q):
                if out.mask[b, k, t]:
                    w = 3.0 if k == 0 else 1.0
                    ce = -torch.log_softmax(out.logits[b, k, t].double(), -1)[int(codes[b, 1 + k, t])]
                    sums["audio"][0] += w * float(ce)
                    sums["audio"][1] += w
    text, audio = (sums[k][0] / sums[k][1] for k in ("text", "audio"))
    assert parts["text_loss"] == pytest.approx(text, rel=1e-5) and parts["audio_loss"] == pytest.approx(audio, rel=1e-5)
    assert float(loss) == pytest.approx(text + audio, rel=1e-5)


def test_conversations_become_rows_padded_with_missing_values():
    a, b = torch.arange(3 * 10).view(3, 10), torch.arange(3 * 4).view(3, 4)
    rows = conversation_rows([a, b], 4)
    assert rows.shape == (4, 3, 4)  # 10 steps -> 4 + 4 + 2(+2 padding); 4 steps -> one row
    assert torch.equal(rows[0], a[:, :4]) and torch.equal(rows[2, :, :2], a[:, 8:]) and (rows[2, :, 2:] == -1).all()
    assert torch.equal(rows[3], b)


@pytest.mark.parametrize("mode", ["ttt_only", "lora"])
def test_a_short_run_trains_the_ttt_layers_and_saves_a_loadable_model(tmp_path, mode):
    path = write_run(tmp_path, mode)
    assert isinstance(load_config(path), MoshiRunConfig)
    assert main(["train", str(path)]) == 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logs = [log for log in logs if "loss" in log]  # the engine's last line is its summary (runtime, mean loss)
    assert [log["step"] for log in logs] == [1, 2, 3]
    for log in logs:
        assert torch.isfinite(torch.tensor(log["loss"]))
        assert log["ttt/layer0/grad_conv"] > 0 and log["ttt/layer2/grad_conv"] > 0  # read before clipping
        assert (mode == "ttt_only") == ("ttt/layer2/grad_down" in log)  # LoRA mode freezes the down projection
    assert logs[-1]["ttt/layer0/grad_target"] > 0
    final = tmp_path / "run" / "final"
    base = load_file(str(tmp_path / "model.safetensors"))
    saved = load_file(str(final / "model.safetensors"))
    assert set(saved) == set(base)  # moshi's own layout: LoRA merged, names unchanged
    assert torch.equal(saved["text_emb.weight"], base["text_emb.weight"])  # frozen in both modes
    down = "transformer.layers.0.gating.linear_out.weight"
    assert not torch.equal(saved[down], base[down])  # trained (ttt_only) or LoRA-merged (lora)
    if mode == "ttt_only":
        other = "transformer.layers.1.gating.linear_out.weight"
        assert torch.equal(saved[other], base[other])
    lm = load_moshi(final / "model.safetensors", TINY, ttt_file=final / "ttt.safetensors", dtype=torch.float32)
    assert lm.transformer.layers[0].gating.ttt.conv_weight.abs().sum() > 0  # the TTT weights trained and travelled
    fresh = convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    codes = random_codes(lm, 1, 16)
    assert not torch.allclose(lm(codes).text_logits.nan_to_num(), fresh(codes).text_logits.nan_to_num())
    # the checkpoint says how it was trained, and the doctor checks what holds for a trained model
    from inplace_ttt import doctor
    from inplace_ttt.families.moshi import load_base

    assert lm.inplace_ttt["training"] == [{"mode": mode, "steps": 3, **({"lora_target_modules": ["linear_in", "linear_out"]} if mode == "lora" else {})}]
    report = doctor(lm.train(), {"codes": random_codes(lm, 2, 12)}, load_base(tmp_path / "model.safetensors", TINY))
    assert report.ok, str(report)
    assert {"TTT off reproduces the base", "frozen weights unchanged"} <= {c.name for c in report.checks}


def test_bad_runs_are_refused_with_the_field_named(tmp_path):
    path = write_run(tmp_path, "ttt_only")
    assert main(["train", str(path), "--data.row_length", "6"]) == 2  # fewer than two chunks of 4
    with pytest.raises(ValueError, match="two TTT chunks"):
        from inplace_ttt.train.run import train

        train(load_config(path, ["--data.row_length", "6"]))
    with pytest.raises(ValueError, match="train.mode"):
        load_config(path, ["--train.mode", "prefix"])
    save_file({"codes": torch.zeros(3, 20, dtype=torch.int64)}, str(tmp_path / "conversations" / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors.*3 streams"):
        train(load_config(path, ["--train.output_dir", str(tmp_path / "run2")]))


@pytest.mark.integration
def test_a_bfloat16_run_trains_as_far_as_a_float32_run(tmp_path):
    """In bf16 the optimizer steps float32 copies: stepping the bf16 weights in place rounds
    steps below half their spacing away (most of the down projection's at lr 1e-5, all of
    W_target's diagonal of ones at 5e-4)."""
    moved, diagonal = {}, {}
    for dtype in ("float32", "bfloat16"):
        path = write_run(tmp_path / dtype, "ttt_only")
        args = [
            "--model.dtype",
            dtype,
            "--train.learning_rate",
            "1e-5",
            "--train.ttt_params_learning_rate",
            "5e-4",
            "--train.max_steps",
            "60",
            "--train.logging_steps",
            "60",
        ]
        assert main(["train", str(path), *args]) == 0
        final = tmp_path / dtype / "run" / "final"
        key = "transformer.layers.0.gating.linear_out.weight"
        saved = load_file(str(final / "model.safetensors"))[key]
        base = load_file(str(tmp_path / dtype / "model.safetensors"))[key].to(saved.dtype)  # as loaded
        moved[dtype] = (saved.float() - base.float()).norm().item()
        target = load_file(str(final / "ttt.safetensors"))["transformer.layers.0.gating.ttt.target_weight"]
        diagonal[dtype] = (target.float().diagonal() - 1).abs().max().item()
    assert moved["float32"] > 0 and 0.5 < moved["bfloat16"] / moved["float32"] < 2, moved
    assert diagonal["bfloat16"] > 0, diagonal


def test_an_empty_conversation_is_refused_with_its_file_named(tmp_path):
    from inplace_ttt.families.moshi.codes import read_conversation

    save_file({"codes": torch.zeros(17, 0, dtype=torch.int64)}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="empty.safetensors.*no steps"):
        read_conversation(tmp_path / "empty.safetensors", 17, 48, 32)


# the shared engine: checkpoints, resume, accumulation, several processes, evaluation ------------


@pytest.mark.integration
def test_a_killed_moshi_run_resumes_exactly_bf16_master_weights_included(tmp_path):
    path = moshi_run(tmp_path, model={"dtype": "bfloat16"})
    reference, run = tmp_path / "reference", tmp_path / "run"
    edit(path, train={"output_dir": str(reference)})
    assert run_cli("train", str(path)).returncode == 0
    edit(path, train={"output_dir": str(run)})
    died = train_dying_in_checkpoint(path, 4)
    assert died.returncode == 9, died.stderr[-2000:]
    assert (run / "checkpoint-2" / "COMPLETE").is_file() and not (run / "checkpoint-4" / "COMPLETE").exists()
    assert (run / "checkpoint-2" / "master_weights.safetensors").is_file()  # the float32 copies of the bf16 weights
    saved = load_file(str(run / "checkpoint-2" / "model.safetensors"))
    assert all(".ttt." in k or "linear_out" in k for k in saved)  # ttt_only: the trained weights, not the frozen 16 layers
    again = run_cli("train", str(path))
    assert again.returncode == 2 and "already holds a run: pass --resume" in again.stderr
    resumed = run_cli("train", str(path), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(run) == losses(reference) and sorted(losses(run)) == [1, 2, 3, 4, 5, 6]  # exactly
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # one line per step: the lines logged after checkpoint-2 went with the crash
    final, ref_final = (load_file(str(d / "final" / "ttt.safetensors")) for d in (run, reference))
    assert all(torch.equal(final[k], ref_final[k]) for k in ref_final)


def test_lora_checkpoints_hold_the_adapter_and_the_ttt_weights_and_resume_exactly(tmp_path):
    import shutil

    path = write_run(tmp_path, "lora", steps=4)
    edit(path, train={"save_steps": 2, "report_to": []})
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    held = set(p.name for p in (run / "checkpoint-2").iterdir())
    assert {"adapter_model.safetensors", "ttt_weights.safetensors", "COMPLETE"} <= held and "model.safetensors" not in held
    first = losses(run)
    shutil.rmtree(run / "checkpoint-4")
    (run / "final").rename(tmp_path / "final-1")
    assert main(["train", str(path), "--resume"]) == 0
    assert losses(run) == first


def test_accumulation_checkpointing_limits_tensorboard_and_telemetry(tmp_path):
    path = moshi_run(
        tmp_path,
        train={
            "max_steps": 4,
            "save_steps": 1,
            "save_total_limit": 2,
            "gradient_accumulation_steps": 2,
            "per_device_train_batch_size": 1,
            "report_to": ["tensorboard"],
        },
    )
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert list(run.rglob("events.out.tfevents*"))
    plain = losses(run)
    for key in ("ttt/grad_share", "ttt/grad_norm", "clip_scale", "text_loss", "audio_loss", "ttt/layer0/fast_ratio"):
        assert key in json.loads((run / "metrics.jsonl").read_text().splitlines()[0]), key
    # moshi's activation checkpointing gives the same losses
    edit(path, train={"gradient_checkpointing": True, "output_dir": str(tmp_path / "checkpointed")})
    assert main(["train", str(path)]) == 0
    again = losses(tmp_path / "checkpointed")
    assert sorted(again) == sorted(plain) and all(abs(again[s] - plain[s]) <= 1e-6 * abs(plain[s]) for s in plain)


def test_evaluation_on_held_out_conversations_is_the_weighted_loss(tmp_path):
    path = moshi_run(tmp_path, train={"max_steps": 4, "eval_steps": 2, "per_device_eval_batch_size": 1, "save_steps": 100})
    held = tmp_path / "held-out"
    held.mkdir()
    lm = tiny_lm(1)
    for i, T in enumerate([20, 12]):
        save_file({"codes": random_codes(lm, 1, T)[0]}, str(held / f"h{i}.safetensors"))
    edit(path, data={"eval": [str(held)]})
    assert main(["train", str(path)]) == 0
    logged = {
        json.loads(line)["step"]: json.loads(line)["eval_loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line
    }
    assert sorted(logged) == [2, 4]
    final = tmp_path / "run" / "final"
    trained = load_moshi(final / "model.safetensors", TINY, ttt_file=final / "ttt.safetensors", dtype=torch.float32)
    rows = conversation_rows([load_file(str(held / f"h{i}.safetensors"))["codes"].long() for i in range(2)], 16)
    with torch.no_grad():  # an independent loop: each held-out row's weighted loss, then their mean
        per_row = [float(training_loss(trained, rows[i : i + 1], 100.0, 0.5)["loss"]) for i in range(len(rows))]
    assert logged[4] == pytest.approx(sum(per_row) / len(per_row), rel=1e-5)


# bad input: one message naming the file or field, exit code 2, nothing written -----------------


def _bad_codes(tmp_path, codes):
    folder = tmp_path / "bad-data"
    folder.mkdir(exist_ok=True)
    save_file({"codes": codes}, str(folder / "bad.safetensors"))
    return {"data": {"train": [str(folder)]}}


BAD_RUNS = {
    "missing weights": (lambda tmp: {"model": {"weights": str(tmp / "nope.safetensors")}}, r"model.weights: no such file: .*nope.safetensors"),
    "pickled weights": (
        lambda tmp: (tmp / "model.pt").write_bytes(b"x") and {"model": {"weights": str(tmp / "model.pt")}},
        r"model.weights: .*model.pt is not a safetensors file \(.safetensors, .sft, .sfts\); only safetensors weights are read",
    ),
    "lm_kwargs of another model": (
        lambda tmp: (tmp / "big.json").write_text(json.dumps({**TINY, "dim": 64})) and {"model": {"lm_kwargs": str(tmp / "big.json")}},
        r"model.weights .*model.safetensors does not load with model.lm_kwargs .*big.json",
    ),
    "lm_kwargs not JSON": (
        lambda tmp: (tmp / "bad.json").write_text("{dim: ") and {"model": {"lm_kwargs": str(tmp / "bad.json")}},
        r"model.lm_kwargs: cannot read .*bad.json as JSON",
    ),
    "wrong number of streams": (
        lambda tmp: _bad_codes(tmp, torch.zeros(3, 20, dtype=torch.int64)),
        r"bad.safetensors: 'codes' has 3 streams; the model reads 17",
    ),
    "codes out of the vocabulary": (
        lambda tmp: _bad_codes(tmp, torch.full((17, 20), 40, dtype=torch.int64)),
        r"bad.safetensors: codes outside the model's vocabularies",
    ),
    "codes all missing": (lambda tmp: _bad_codes(tmp, torch.full((17, 20), -1, dtype=torch.int64)), r"bad.safetensors: every code is -1"),
    "conversations shorter than two chunks": (
        lambda tmp: _bad_codes(tmp, torch.zeros(17, 7, dtype=torch.int64)),
        r"data.train: every conversation row holds fewer than two TTT chunks \(8 steps; the longest has 7\)",
    ),
    "unknown mode": (lambda tmp: {"train": {"mode": "prefix"}}, r"train.mode must be one of \('full', 'ttt_only', 'lora'\)"),
    "device tpu": (lambda tmp: {"model": {"device": "tpu"}}, r"model.device must be 'auto', 'cpu' or 'cuda'; got 'tpu'"),
    "truncated weights": (
        lambda tmp: _cut(tmp / "model.safetensors") and {},
        r"model.weights: .*model.safetensors is not a readable safetensors file \(.*\): it is empty, cut short or corrupt",
    ),
    "corrupt codes file": (lambda tmp: _cut(tmp / "conversations" / "conv0.safetensors") and {}, r"conv0.safetensors: not a readable safetensors file"),
    "nothing to predict": (
        lambda tmp: _bad_codes(tmp, torch.cat([torch.full((9, 20), -1), torch.zeros(8, 20, dtype=torch.int64)])),
        r"bad.safetensors: the 9 streams the loss predicts \(text and the model's 8 audio codebooks\) are all -1 \(missing\): nothing to train on",
    ),
    "a changed ttt section over trained TTT weights": (
        lambda tmp: _trained_ttt(tmp) and {"model": {"ttt_weights": str(tmp / "trained" / "ttt.safetensors")}, "ttt": {"chunk_size": 8}},
        r"model.ttt_weights .*ttt.safetensors is a trained In-Place TTT checkpoint, .*differs: ttt.chunk_size 8 \(checkpoint: 4\)",
    ),
}


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return True


def _trained_ttt(tmp):
    from inplace_ttt.families.moshi import save_ttt

    save_ttt(convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings")), tmp / "trained")
    return True


@pytest.mark.parametrize("case", BAD_RUNS)
def test_bad_moshi_runs_get_one_message_and_write_nothing(tmp_path, capsys, case):
    make, message = BAD_RUNS[case]
    path = write_run(tmp_path, "ttt_only")
    edit(path, **make(tmp_path))
    assert main(["train", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ittt train: error:") and re.search(message, last), last
    assert not (tmp_path / "run").exists()


def test_the_baseline_without_ttt_starts_where_the_ttt_run_starts_and_its_final_is_read_like_any(tmp_path):
    """`--ttt null`: the unconverted LMModel on the same codes, batches and seed. The converted model's
    warm start is exact (V = 0 adds an exact zero to each TTT layer's output), so the first step's
    loss, computed before any update, is the same number in both runs."""
    from inplace_ttt.eval.moshi.models import ModelSpec

    first = {}
    for name, extra in (("ttt", []), ("baseline", ["--ttt", "null"])):
        path = write_run(tmp_path / name, "full", steps=1)
        assert main(["train", str(path), "--train.report_to", "[]", "--train.doctor", "false", *extra]) == 0
        first[name] = losses(tmp_path / name / "run")[1]
    assert first["baseline"] == first["ttt"]
    final = tmp_path / "baseline" / "run" / "final"
    assert sorted(p.name for p in final.iterdir() if not p.name.startswith(".")) == ["model.safetensors"]
    spec = ModelSpec.parse(f"baseline={final}")
    assert spec.ttt is None
    lm = spec.load(TINY, "cpu", torch.float32)
    saved = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in saved.items())
    assert not torch.equal(saved["text_emb.weight"], load_file(str(tmp_path / "baseline" / "model.safetensors"))["text_emb.weight"])  # trained


def test_the_baseline_refuses_what_needs_ttt_layers(tmp_path):
    path = write_run(tmp_path, "ttt_only")
    with pytest.raises(ValueError, match="ttt_only.*ttt: null has none"):
        load_config(path, ["--ttt", "null"])


def test_lm_kwargs_inline_or_as_a_file_load_the_same_model(tmp_path):
    from inplace_ttt.train.moshi import load_lm

    path = write_run(tmp_path, "ttt_only")
    from_file = load_config(path)
    inline = load_config(path, ["--model.lm_kwargs", json.dumps(TINY)])
    assert isinstance(from_file.model.lm_kwargs, str) and inline.model.lm_kwargs == TINY
    a, b = (load_lm(c.model, None) for c in (from_file, inline))
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
