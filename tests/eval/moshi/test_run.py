"""`ittt moshi-eval` end to end: several models in one report, by minute; bad runs refused; a
manifest encoded, then evaluated."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inplace_ttt.cli import main
from inplace_ttt.eval.moshi.loss import conversation_nll
from tests.eval.moshi.conftest import ttt_lm, write_models
from tests.speech.conftest import dataset, kit, kit_flags  # noqa: F401  (fixtures: a manifest of espeak-ng conversations, Mimi, tokenizer)
from tests.tiny_moshi import tiny_lm


def test_several_models_in_one_report_by_minute(tmp_path):
    data, conversations = write_models(tmp_path)
    out = tmp_path / "eval"
    args = [
        "moshi-eval",
        "--model",
        f"base={tmp_path / 'model.safetensors'}",
        "--model",
        f"fresh={tmp_path / 'fresh'}",
        "--model",
        f"ttt={tmp_path / 'trained'}",
        "--model",
        f"ttt-clip={tmp_path / 'trained'},clip_tau=0.01",
        "--model",
        f"ttt-yarn={tmp_path / 'trained'},yarn=4",
        "--data",
        str(data),
        "--lm-kwargs",
        str(tmp_path / "lm.json"),
        "--bucket-minutes",
        "0.04",
        "--steps-per-forward",
        "50",
        "--out",
        str(out),
    ]  # buckets of 30 steps
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert list(models) == ["base", "fresh", "ttt", "ttt-clip", "ttt-yarn"]
    # the pooled loss of a bucket: every value of every conversation in those 30 steps, by hand
    lm = ttt_lm()
    nlls = [conversation_nll(lm, c.long(), 1000) for c in conversations]
    base_nlls = [conversation_nll(tiny_lm(), c.long(), 1000) for c in conversations]  # the baseline: the first model, no TTT
    for metric, pick in (
        ("text", lambda n: n["text"][None]),
        ("audio", lambda n: n["audio"]),
        ("audio_semantic", lambda n: n["audio"][:1]),
        ("text_words", lambda n: torch.where(n["words"], n["text"], torch.nan)[None]),
    ):
        for b in range(5):
            values = torch.cat([pick(n)[:, 30 * b : 30 * (b + 1)].flatten() for n in nlls])
            values = values[~values.isnan()]
            got = models["ttt"]["buckets"][metric]
            assert got["count"][b] == len(values)
            assert got["loss"][b] == pytest.approx(values.mean().item(), rel=1e-5) if len(values) else got["loss"][b] is None
            # the 95% interval resamples conversations: it holds the pooled mean, and lies within the conversations' own means
            per_conversation = [v[~v.isnan()] for v in (pick(n)[:, 30 * b : 30 * (b + 1)].flatten() for n in nlls)]
            means = [float(v.mean()) for v in per_conversation if len(v)]
            ci = got["interval"][b]
            if len(means) >= 2:
                slack = 1e-6 * max(means)  # the means above are float32 sums, results.json float64
                assert ci[0] <= got["loss"][b] <= ci[1] and min(means) - slack <= ci[0] and ci[1] <= max(means) + slack, (metric, b)
            else:
                assert ci is None
            # ttt - base, paired: the same conversations' values of the base model, by hand
            base_values = torch.cat([pick(n)[:, 30 * b : 30 * (b + 1)].flatten() for n in base_nlls])
            base_values = base_values[~base_values.isnan()]
            pair = models["ttt"]["paired"][metric]
            if len(values):
                assert pair["difference"][b] == pytest.approx((values.mean() - base_values.mean()).item(), rel=1e-5, abs=1e-6)
            else:
                assert pair["difference"][b] is None
            if len(means) >= 2:
                slack = 1e-6 * max(means)
                assert pair["interval"][b][0] - slack <= pair["difference"][b] <= pair["interval"][b][1] + slack, (metric, b)
            # fresh - base: equal losses on every conversation, so every resample of pairs gives 0 (unpaired resampling would not)
            fresh = models["fresh"]["paired"][metric]
            assert fresh["difference"][b] == (0.0 if len(values) else None) and fresh["interval"][b] == ([0.0, 0.0] if len(means) >= 2 else None)
    assert models["fresh"]["buckets"] == models["base"]["buckets"]  # a converted model starts as the pretrained one
    for other in ("ttt", "ttt-clip", "ttt-yarn"):
        assert models[other]["buckets"]["text"]["loss"] != models["base"]["buckets"]["text"]["loss"], other
    assert results["baseline"] == "base" and "paired" not in models["base"]  # by default, the first model without TTT weights
    assert models["ttt-clip"]["clip_tau"] == 0.01 and models["ttt-yarn"]["yarn"] == 4.0 and models["base"]["ttt_layers"] == []
    report = (out / "report.md").read_text()
    assert "## audio loss (nats) by minute" in report and "| ttt-yarn |" in report and "0-0.04 | 0.04-0.08" in report
    assert "[95% bootstrap interval over conversations]" in report
    assert "| ttt - base |" in report and "| fresh - base | +0.000 [+0.000, +0.000] |" in report
    assert (out / "moshi_loss_by_minute.png").stat().st_size > 0 and (out / "moshi_difference_by_minute.png").stat().st_size > 0


def test_the_baseline_is_named(tmp_path):
    data, _ = write_models(tmp_path)
    out = tmp_path / "eval"
    models = ["--model", f"ttt={tmp_path / 'trained'}", "--model", f"base={tmp_path / 'model.safetensors'}", "--model", f"fresh={tmp_path / 'fresh'}"]
    args = ["moshi-eval", *models, "--data", str(data), "--lm-kwargs", str(tmp_path / "lm.json"), "--bucket-minutes", "0.1", "--out", str(out)]
    assert main([*args, "--baseline", "ttt"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["baseline"] == "ttt" and results["settings"]["baseline"] == "ttt"
    m = results["models"]
    assert "paired" not in m["ttt"] and set(m) == {"ttt", "base", "fresh"}
    for metric in ("text", "audio"):  # base - ttt: what ttt - base would be, negated
        expected = [b - t for b, t in zip(m["base"]["buckets"][metric]["loss"], m["ttt"]["buckets"][metric]["loss"])]
        assert m["base"]["paired"][metric]["difference"] == pytest.approx(expected)
    assert "| base - ttt |" in (out / "report.md").read_text()


def test_bad_runs_exit_2_naming_what_is_wrong(tmp_path, capsys):
    data, _ = write_models(tmp_path)
    base = ["--lm-kwargs", str(tmp_path / "lm.json"), "--out", str(tmp_path / "eval")]
    odd = tmp_path / "two-streams.safetensors"
    save_file({"codes": torch.zeros(2, 10, dtype=torch.int32)}, str(odd))
    cases = [
        (["--model", f"a={tmp_path / 'gone.safetensors'}", "--data", str(data)], "--model a: model weights: no such file"),
        (["--model", f"a={tmp_path / 'model.safetensors'},yarn=2", "--data", str(data)], "need an In-Place TTT model"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--data", str(tmp_path / "x.jsonl")], "needs --mimi and --tokenizer"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--model", f"a={tmp_path / 'fresh'}", "--data", str(data)], "its own name"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--data", str(tmp_path / "lm.json")], "neither a codes file"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--baseline", "b", "--data", str(data)], "--baseline 'b': not one of the models (a)"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--data", str(odd)], "has 2 streams"),  # found once the model is loaded
    ]
    for extra, message in cases:
        assert main(["moshi-eval", *extra, *base]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar, if one had started
        assert err.startswith("ittt moshi-eval: error: ") and message in err, (message, err)
        assert not (tmp_path / "eval").exists(), message  # a refusal leaves no empty report folder


def test_a_manifest_is_encoded_then_evaluated(kit, dataset, tmp_path):  # noqa: F811  (the imported fixtures)
    """moshi-finetune's manifest as --data: encoded with Mimi and the tokenizer into OUT/codes/, then read."""
    out = tmp_path / "eval"
    args = [
        "moshi-eval",
        "--model",
        f"base={kit['weights']}",
        "--data",
        str(dataset["manifest"]),
        *kit_flags(kit),
        "--bucket-minutes",
        "0.1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(Path(p).name for p in results["models"]["base"]["conversations"]) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    assert (out / "codes" / "data" / "part" / "b.safetensors").is_file()
    steps = sum(round(e["duration"] * 12.5) for e in dataset["entries"])  # each text step is predicted once
    assert abs(sum(results["models"]["base"]["buckets"]["text"]["count"]) - steps) <= len(dataset["entries"])
