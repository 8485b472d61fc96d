"""Training that goes non-finite stops at that step with one message, saves nothing broken, and
logs no NaN as 0.0; every loader and the doctor refuse non-finite weights by name."""

import json
import math
import os
import re

import pytest
import torch
from safetensors.torch import load_file

from inplace_ttt.cli import main
from inplace_ttt.train.nonfinite import nonfinite_gradient
from inplace_ttt.train.telemetry import MetricsJsonl, group_norms
from tests.train.conftest import edit, moshi_run


def assert_nothing_broken_saved(run):
    """No final/, and every checkpoint's weights finite; metrics.jsonl strict JSON with no loss of 0.0."""
    assert not (run / "final").exists()
    for weights in run.glob("checkpoint-*/*.safetensors"):
        for name, tensor in load_file(weights).items():
            assert torch.isfinite(tensor).all(), f"{weights}: {name}"
    metrics = run / "metrics.jsonl"
    lines = [json.loads(line, parse_constant=pytest.fail) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    assert all(row["loss"] != 0.0 for row in lines if "loss" in row), lines


@pytest.mark.integration
def test_a_learning_rate_that_blows_up_stops_the_run_at_that_step(workspace, capsys):
    edit(workspace["config"], train={"learning_rate": 1e30, "ttt_params_learning_rate": None, "save_steps": 1})
    assert main(["train", str(workspace["config"])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    run = workspace["run"]
    match = re.fullmatch(
        r"ittt train: error: training stopped at step (\d+): (.*)\. Nothing was saved from this step on and final/ is not written; "
        r"the last complete checkpoint is (.*)\. Resume with a lower learning rate: "
        r"ittt train (.*) --resume --allow-changes --train\.learning_rate 1e\+29",
        last,
    )
    assert match, last
    step, problem, checkpoint, config = match.groups()
    assert re.fullmatch(r"the loss is nan|the gradient of .* is not finite \(first: .*\)|the weights hold NaN or infinity: .*", problem), problem
    assert checkpoint == str(run / f"checkpoint-{int(step) - 1}") and config == str(run / "config.yaml")
    assert not list(run.glob(f"checkpoint-{step}*"))
    assert_nothing_broken_saved(run)


@pytest.mark.integration
def test_an_infinite_moshi_loss_weight_stops_the_run_at_its_first_step(tmp_path, capsys):
    config = moshi_run(tmp_path, train={"first_codebook_weight": 1e38})  # finite (an infinite one is refused), the loss overflows
    assert main(["train", str(config)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(  # the line may follow the progress bar's
        r"ittt train: error: training stopped at step 1: the loss is (nan|inf) \(text_loss [0-9.]+, audio_loss (nan|inf)\)\. .*"
        r"no checkpoint is complete, so --resume starts over from step 0\. Resume with a lower learning rate: ittt train .*config\.yaml "
        r"--resume --allow-changes --train\.learning_rate 0\.0001 --train\.ttt_params_learning_rate 0\.001$",
        last,
    ), last
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    assert_nothing_broken_saved(tmp_path / "run")


def test_a_nonfinite_gradient_names_its_group_and_first_parameter():
    model = torch.nn.ModuleDict({"mlp": torch.nn.Linear(2, 2), "conv": torch.nn.Linear(2, 2)})
    named = [("model.layers.0.mlp.ttt.conv_weight", model["conv"].weight), ("model.layers.0.mlp.up_proj.weight", model["mlp"].weight)]
    for _, p in named:
        p.grad = torch.ones_like(p)
    assert nonfinite_gradient(named, group_norms(named)) is None
    named[1][1].grad[0, 1] = math.nan
    assert nonfinite_gradient(named, group_norms(named)) == (
        "the gradient of the other parameters is not finite (first: model.layers.0.mlp.up_proj.weight (1 NaN, 0 inf of 4 values))"
    )


def test_metrics_jsonl_writes_a_nan_as_null(tmp_path):
    from types import SimpleNamespace

    MetricsJsonl(tmp_path / "metrics.jsonl").on_log(
        None, SimpleNamespace(is_world_process_zero=True, global_step=3), None, logs={"eval_loss": math.nan, "x": 1.5}
    )
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail) == {"step": 3, "eval_loss": None, "x": 1.5}


def test_loaders_and_the_doctor_refuse_nonfinite_weights_by_name(tmp_path):
    import inplace_ttt
    from inplace_ttt.doctor import doctor
    from inplace_ttt.families.hf import load_causal_lm
    from tests.tiny_hf import converted, tiny

    base = tiny()
    with torch.no_grad():
        base.model.layers[1].mlp.up_proj.weight[0, 0] = math.nan
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(
        ValueError, match=r"base: non-finite weights \(NaN or infinity\) in model\.layers\.1\.mlp\.up_proj\.weight \(1 NaN, 0 inf of \d+ values\)"
    ):
        load_causal_lm(tmp_path / "base")
    model = converted()
    conv = next(layer for _, layer in inplace_ttt.ttt_layers(model)).ttt.conv_weight
    with torch.no_grad():
        conv[0, 0] = math.inf
    model.save_pretrained(tmp_path / "ttt")
    with pytest.raises(ValueError, match=r"non-finite weights .* in model\.layers\.0\.mlp\.ttt\.conv_weight \(0 NaN, 1 inf"):
        inplace_ttt.from_pretrained(tmp_path / "ttt")
    report = doctor(model, torch.randint(0, 90, (1, 32)))
    assert "weights finite" in report.failed() and "model.layers.0.mlp.ttt.conv_weight (0 NaN, 1 inf" in str(report), report


def test_moshi_loaders_refuse_nonfinite_weights_by_name(tmp_path):
    os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU
    pytest.importorskip("moshi")
    from safetensors import safe_open
    from safetensors.torch import save_file

    from inplace_ttt import TTTConfig
    from inplace_ttt.families.moshi import load_base, load_moshi, save_ttt
    from tests.tiny_moshi import TINY, write_tiny_checkpoint

    write_tiny_checkpoint(tmp_path / "model.safetensors")
    lm = load_moshi(tmp_path / "model.safetensors", TINY, config=TTTConfig(layers=[0], chunk_size=4), dtype=torch.float32)
    save_ttt(lm, tmp_path / "run")
    ttt = load_file(tmp_path / "run" / "ttt.safetensors")
    name = sorted(ttt)[0]
    ttt[name][...] = math.nan
    with safe_open(str(tmp_path / "run" / "ttt.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    save_file(ttt, str(tmp_path / "run" / "ttt.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=rf"ttt\.safetensors: non-finite weights .* in {re.escape(name)} \("):
        load_moshi(tmp_path / "run" / "model.safetensors", TINY, ttt_file=tmp_path / "run" / "ttt.safetensors", dtype=torch.float32)
    weights = load_file(tmp_path / "model.safetensors")
    broken = sorted(weights)[0]
    weights[broken] = torch.full_like(weights[broken], math.nan)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"model\.safetensors: non-finite weights .* in {re.escape(broken)} \("):
        load_base(tmp_path / "model.safetensors", TINY, dtype=torch.float32)
