"""`ittt moshi-eval`: losses streamed in pieces past the model's context equal one forward over
the whole conversation; several models in one report, by minute."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("moshi")
from safetensors.torch import save_file  # noqa: E402

import inplace_ttt.eval.moshi as moshi_eval  # noqa: E402
from inplace_ttt import TTTConfig, convert  # noqa: E402
from inplace_ttt.cli import main  # noqa: E402
from inplace_ttt.eval.moshi import ModelSpec, conversation_nll  # noqa: E402
from inplace_ttt.families.moshi import save_ttt  # noqa: E402
from tests.speech.conftest import dataset, kit, kit_flags, single_thread  # noqa: E402, F401  (fixtures: a manifest of espeak-ng conversations, Mimi, tokenizer)
from tests.tiny_moshi import TINY, active_targets, random_codes, tiny_lm, write_tiny_checkpoint  # noqa: E402  (sets NO_TORCH_COMPILE)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def forward_nll(lm, codes):
    """The reference: `LMModel.forward` over the whole conversation, -log p of each target (NaN where invalid)."""
    out = lm(codes[None])
    logp_text = torch.log_softmax(out.text_logits[0, 0].double(), -1)
    text = -logp_text.gather(-1, codes[0].clamp(min=0)[:, None])[:, 0]
    logp_audio = torch.log_softmax(out.logits[0].double(), -1)
    audio = -logp_audio.gather(-1, codes[1 : 1 + lm.dep_q].clamp(min=0)[..., None])[..., 0]
    return text.masked_fill(~out.text_mask[0, 0], float("nan")), audio.masked_fill(~out.mask[0], float("nan"))


def ttt_lm():
    lm = convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=8, target_source="token_embeddings"))
    active_targets(lm)
    return lm


def test_streamed_losses_equal_one_forward_over_a_conversation_longer_than_the_context(monkeypatch):
    lm = ttt_lm()
    T = 150  # the context is 64 steps
    codes = random_codes(lm, 1, T)[0]
    codes[4, 100:110] = -1  # missing values: no loss
    with torch.no_grad():
        text, audio = forward_nll(lm, codes)
    for piece in (40, 1, T):
        nll = conversation_nll(lm, codes, piece)
        assert torch.equal(nll["text"].isnan(), text.isnan()) and torch.equal(nll["audio"].isnan(), audio.isnan())
        torch.testing.assert_close(nll["text"], text, rtol=1e-5, atol=1e-5, equal_nan=True)
        torch.testing.assert_close(nll["audio"], audio, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert nll["audio"].isnan().sum() == 7 + 10  # the 7 delayed codebooks' last step, and the missing values
    monkeypatch.setattr(moshi_eval, "widen_kv_caches", lambda *a: 0)  # moshi's own ring of `context` steps
    narrow = conversation_nll(lm, codes, 40)
    assert (narrow["text"] - text).abs().nan_to_num(0).max() > 1e-3


def write_models(root):
    write_tiny_checkpoint(root / "model.safetensors")
    (root / "lm.json").write_text(json.dumps(TINY))
    save_ttt(convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=8, target_source="token_embeddings")), root / "fresh")  # untrained: the base model exactly
    save_ttt(ttt_lm(), root / "trained")
    data = root / "held-out"
    data.mkdir()
    conversations = [random_codes(tiny_lm(), 1, T)[0] for T in (150, 75)]
    for i, codes in enumerate(conversations):
        save_file({"codes": codes.to(torch.int32)}, str(data / f"conv{i}.safetensors"))
    return data, conversations


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
        "--lm-config",
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
    assert models["fresh"]["buckets"] == models["base"]["buckets"]  # a converted model starts as the pretrained one
    for other in ("ttt", "ttt-clip", "ttt-yarn"):
        assert models[other]["buckets"]["text"]["loss"] != models["base"]["buckets"]["text"]["loss"], other
    assert models["ttt-clip"]["clip_tau"] == 0.01 and models["ttt-yarn"]["yarn"] == 4.0 and models["base"]["ttt_layers"] == []
    report = (out / "report.md").read_text()
    assert "## audio loss (nats) by minute" in report and "| ttt-yarn |" in report and "0-0.04 | 0.04-0.08" in report
    assert "[95% bootstrap interval over conversations]" in report
    assert (out / "moshi_loss_by_minute.png").stat().st_size > 0


@pytest.mark.parametrize(
    "spec,message",
    [
        ("base", "expected NAME=PATH"),
        ("base=m.safetensors,tau=1", "unknown option 'tau=1'"),
        ("base=m.safetensors,clip_tau=small", "take numbers"),
    ],
)
def test_a_bad_model_spec_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(spec)


def test_bad_runs_exit_2_naming_what_is_wrong(tmp_path, capsys):
    data, _ = write_models(tmp_path)
    base = ["--lm-config", str(tmp_path / "lm.json"), "--out", str(tmp_path / "eval")]
    cases = [
        (["--model", f"a={tmp_path / 'gone.safetensors'}", "--data", str(data)], "--model a: model weights: no such file"),
        (["--model", f"a={tmp_path / 'model.safetensors'},yarn=2", "--data", str(data)], "need an In-Place TTT model"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--data", str(tmp_path / "x.jsonl")], "needs --mimi and --tokenizer"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--model", f"a={tmp_path / 'fresh'}", "--data", str(data)], "its own name"),
        (["--model", f"a={tmp_path / 'model.safetensors'}", "--data", str(tmp_path / "lm.json")], "neither a codes file"),
    ]
    for extra, message in cases:
        assert main(["moshi-eval", *extra, *base]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("ittt moshi-eval: error: ") and message in err, (message, err)


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
