"""`ittt demo`, shortened to a few steps: the whole pipeline runs and keeps everything in one run directory."""

import json

import pytest
from safetensors.torch import load_file

from inplace_ttt.cli import main
from inplace_ttt.demo import DemoSettings


@pytest.mark.integration
def test_short_demo_runs_the_whole_pipeline(tmp_path, capsys):
    run = tmp_path / "demo"
    args = ["demo", "--out", str(run), "--steps", "2", "--row-length", "256", "--chunk-size", "64", "--lengths", "256", "--passages", "6", "--samples", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "max |logits(converted) - logits(base)| = 0.00e+00" in out  # the exact warm start, on real text
    assert f"report: {run / 'report.md'}" in out
    assert "| context | baseline | ittt | ittt - baseline |" in out

    results = json.loads((run / "results.json").read_text())
    assert list(results["models"]) == ["baseline", "ittt"]
    assert [m["ttt"] for m in results["models"].values()] == [False, True]
    for m in results["models"].values():
        contexts = m["sliding_window"]["contexts"]
        assert list(contexts) == ["0", "128"] and all(c["documents"] == 6 for c in contexts.values())
        assert list(m["recall"]) == ["256"]
    report = (run / "report.md").read_text()
    for piece in (
        "## Training loss",
        "| ittt |",
        "| baseline |",
        "## Sliding window",
        "| context | baseline | ittt | ittt - baseline | documents |",
        "![training_loss](training_loss.png)",
    ):
        assert piece in report
    for plot in ("training_loss.png", "loss_by_position.png", "sliding_window.png", "recall_accuracy.png"):
        assert (run / plot).is_file()

    # both runs trained from the same start for the same steps; only the TTT run has TTT weights, and they moved
    config = json.loads((run / "ittt" / "final" / "config.json").read_text())
    assert config["model_type"] == "inplace_ttt" and config["inplace_ttt"]["layers"] == [3]
    assert config["sliding_window"] == 128  # the embedded base model's attention window
    assert "inplace_ttt" not in json.loads((run / "baseline" / "final" / "config.json").read_text())
    weights = load_file(run / "ittt" / "final" / "model.safetensors")
    conv = [t for name, t in weights.items() if name.endswith("ttt.conv_weight")]
    assert len(conv) == 1 and all(t.abs().sum() > 0 for t in conv)
    for name in ("ittt", "baseline"):
        steps = [json.loads(line)["step"] for line in (run / name / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        assert steps[-1] == 2


def test_contexts_double_past_the_window_up_to_the_longest():
    assert DemoSettings().contexts() == [0, 128, 256, 512, 896]
    assert DemoSettings(eval_lengths=[2048], block=128).contexts() == [0, 128, 256, 512, 1024, 1920]
