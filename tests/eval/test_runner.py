"""`ittt eval` end to end on tiny models: outputs, identical inputs, determinism, bad input."""

import dataclasses
import json
import random

import pytest

from inplace_ttt.assets import corpus_files
from inplace_ttt.cli import main
from inplace_ttt.documents import read_documents
from inplace_ttt.eval.ruler import TASK_NAMES, make_samples
from inplace_ttt.eval.runner import ALL_TASKS, EvalSettings, evaluate, model_to_evaluate, parse_lengths
from inplace_ttt.families import ttt_layers
from tests.eval.conftest import WORDS
from tests.tiny_hf import tiny, tiny_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A folder of three held-out documents (one per .txt file)."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("heldout")
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(700)))
    return folder


def without_timing(results: dict) -> dict:
    for entry in results["models"].values():
        entry.pop("seconds"), entry.pop("task_seconds")
    return results


@pytest.mark.integration
def test_whole_eval_of_two_models(models, heldout, tmp_path):
    base, ttt = map(str, models)
    # every task, two lengths, two models: about 8 s on 2 CPU cores (pytest --durations shows it)
    report = evaluate(
        EvalSettings(models=[base, ttt], lengths=[256, 512], samples=2, data=[str(heldout)], tokens_per_forward=96, final_block=64, out=str(tmp_path))
    )
    assert report == tmp_path / "report.md"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["lengths"] == [256, 512] and results["settings"]["seed"] == 0
    assert list(results["models"]) == ["base", "ttt"]
    assert [m["ttt"] for m in results["models"].values()] == [False, True]
    assert results["recall"]["gap"] == {"256": 256 - 64, "512": 512 - 64}  # 16 pairs and their queries
    for entry in results["models"].values():
        assert sorted(entry["ruler"]) == sorted(TASK_NAMES)
        for cell in entry["recall"].values():
            assert len(cell["scores"]) == 2 and 0 <= cell["accuracy"] <= 100
        for task in entry["ruler"].values():
            for length, cell in task.items():
                assert len(cell["scores"]) == 2 and 0 <= cell["accuracy"] <= 100
                assert all(0.99 * int(length) <= o["tokens"] <= int(length) for o in cell["outputs"])
        lp = entry["loss_by_position"]
        assert lp["edges"][0] == 0 and lp["edges"][-1] == 512 and all(x > 0 for x in lp["loss"])
        assert sum(lp["tokens"]) == 3 * 512 and lp["documents"] == [3] * (len(lp["edges"]) - 1)
        assert all(lo <= x <= hi for x, (lo, hi) in zip(lp["loss"], lp["interval"]))
        assert sorted(entry["sliding_window"]["contexts"]) == ["0", "192", "448"]
        for row in entry["sliding_window"]["contexts"].values():
            assert row["interval"][0] <= row["loss"] <= row["interval"][1] and len(row["per_document"]) == 3
    # identical inputs: both models saw the same prompts and answers
    a, b = (results["models"][n]["ruler"] for n in ("base", "ttt"))
    for task in a:
        for length in a[task]:
            assert _answers(a[task][length]) == _answers(b[task][length])
    text = report.read_text()
    for heading in ("## RULER-style tasks", "## Associative recall", "## Loss by position", "## Sliding window"):
        assert heading in text
    assert "| task | length | base | ttt | ttt - base |" in text and "| niah_single | 256 |" in text and "| niah_single | mean |" in text
    for plot in ("ruler_accuracy.png", "recall_accuracy.png", "loss_by_position.png", "sliding_window.png"):
        data = (tmp_path / plot).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"]({plot})" in text


@pytest.mark.integration
def test_same_seed_same_results_and_cli(models, heldout, tmp_path, capsys):
    args = [
        "eval",
        "--model",
        str(models[1]),
        "--tasks",
        "niah_multikey,vt,loss",
        "--lengths",
        "256",
        "--samples",
        "2",
        "--data",
        str(heldout),
        "--tokens-per-forward",
        "100",
        "--clip-tau",
        "0.5",
    ]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert f"report: {tmp_path / 'a' / 'report.md'}" in capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert first["settings"]["clip_tau"] == 0.5
    assert without_timing(first) == without_timing({**second, "settings": {**second["settings"], "out": first["settings"]["out"]}})


def test_clip_tau_reaches_every_ttt_layer(models):
    model = model_to_evaluate(str(models[1]), dtype=__import__("torch").float32, clip_tau=1e-5)
    assert [layer.clip_tau for _, layer in ttt_layers(model)] == [1e-5, 1e-5]
    plain = model_to_evaluate(str(models[0]), dtype=__import__("torch").float32, clip_tau=1e-5)
    assert not hasattr(plain.config, "inplace_ttt")


def test_parse_lengths():
    assert parse_lengths("1k, 2k,4096,512") == [512, 1024, 2048, 4096]
    with pytest.raises(ValueError, match="'2x' is not a token count"):
        parse_lengths("1k,2x")


def test_bad_settings_are_named(models, heldout, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['qa'\]"):
        EvalSettings(models=["m"], tasks=["qa"])
    assert EvalSettings(models=["m"], tasks=["loss"]).data == corpus_files("heldout")  # the embedded corpus by default
    with pytest.raises(ValueError, match="one distinct name per model"):
        EvalSettings(models=["m", "n"], names=["a", "a"])
    with pytest.raises(ValueError, match="lengths must be >= 16"):
        EvalSettings(models=["m"], tasks=["vt"], lengths=[8])
    assert set(ALL_TASKS) == {"loss", "sliding_window", "recall", *TASK_NAMES}
    with pytest.raises(ValueError, match=r"--baseline must name one of the models \['a', 'b'\]; got 'c'"):
        EvalSettings(models=["m", "n"], names=["a", "b"], baseline="c")
    with pytest.raises(ValueError, match=r"--baseline must name one of the models \['base', 'ttt'\]"):
        EvalSettings(models=[str(m) for m in models], baseline="x")
    with pytest.raises(ValueError, match="--documents must be >= 1; got 0"):
        EvalSettings(models=["m"], documents=0)
    with pytest.raises(ValueError, match="--gguf-file: no --model folder holds 'tiny.gguf'"):
        EvalSettings(models=[str(models[0])], gguf_file="tiny.gguf")
    with pytest.raises(ValueError, match="--gguf-file must be a file name inside a --model folder, not a path"):
        EvalSettings(models=[str(models[0])], gguf_file="/x/tiny.gguf")
    other = tmp_path / "other"
    tiny(vocab_size=50).save_pretrained(other)
    tiny_tokenizer(["a", "b", "c"]).save_pretrained(other)
    code = main(["eval", "--model", str(models[0]), "--model", str(other), "--tasks", "vt", "--lengths", "256", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_chat_template_prompts_reach_the_model(models, tmp_path, capsys):
    import shutil

    from tests.eval.conftest import CHAT

    chat = tmp_path / "chat"
    shutil.copytree(models[1], chat)
    tokenizer = tiny_tokenizer(WORDS)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(chat)
    args = ["eval", "--model", str(chat), "--tasks", "niah_single", "--lengths", "256", "--samples", "1", "--tokens-per-forward", "100"]
    assert main([*args, "--chat-template", "--out", str(tmp_path / "a")]) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["settings"]["chat_template"] is True
    haystack = " ".join(read_documents(corpus_files("heldout")))  # the default data
    expected = {flag: make_samples("niah_single", tokenizer, 256, 1, 0, haystack, chat_template=flag)[0].tokens for flag in (False, True)}
    assert expected[True] != expected[False]  # so the prompt's length tells which one the model read
    assert results["models"]["chat"]["ruler"]["niah_single"]["256"]["outputs"][0]["tokens"] == expected[True]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0 and main(["eval", "--model", str(models[1]), *args[3:], "--chat-template"]) == 2
    assert "ittt eval: error: --chat-template: the models' tokenizer has no chat template" in capsys.readouterr().err


def test_answers_end_where_the_models_generation_config_ends_them(models, tmp_path):
    """A chat model's generation_config lists its end of turn beside EOS (`generate` stops at each);
    the RULER answers end there too, not only at the tokenizer's EOS."""
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    args = ["--tasks", "vt", "--lengths", "256", "--samples", "1", "--tokens-per-forward", "100"]
    assert main(["eval", "--model", str(models[1]), *args, "--out", str(tmp_path / "a")]) == 0
    free = json.loads((tmp_path / "a" / "results.json").read_text())["models"]["ttt"]["ruler"]["vt"]["256"]["outputs"][0]["generated"]
    tokenizer = AutoTokenizer.from_pretrained(models[1])
    ids = tokenizer(free, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3 and tokenizer.decode(ids) == free  # a word-level tokenizer: the answer's own ids
    turn_end = ids[2]
    chat = tmp_path / "chat"
    shutil.copytree(models[1], chat)
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, turn_end], pad_token_id=0).save_pretrained(chat)
    assert main(["eval", "--model", str(chat), *args, "--out", str(tmp_path / "b")]) == 0
    ended = json.loads((tmp_path / "b" / "results.json").read_text())["models"]["chat"]["ruler"]["vt"]["256"]["outputs"][0]["generated"]
    assert ended == tokenizer.decode(ids[: ids.index(turn_end)])


def test_passages_are_disjoint_slices_taken_evenly_across_documents():
    import torch

    from inplace_ttt.eval.runner import passages

    docs = [torch.arange(100), torch.arange(1000, 1035), torch.arange(2000, 2250)]
    cut = passages(docs, 30, 100)
    starts = [int(p[0]) for p in cut]
    assert starts == [0, 30, 60, 1000, 2000, 2030, 2060, 2090, 2120, 2150, 2180, 2210]  # short tails dropped
    assert all(torch.equal(p, torch.arange(s, s + 30)) for p, s in zip(cut, starts))
    assert [int(p[0]) for p in passages(docs, 30, 4)] == [0, 1000, 2060, 2150]  # every third of the 12


def _answers(cell):
    return [(o["index"], o["answers"], o["tokens"], o["depths"]) for o in cell["outputs"]]


@pytest.mark.integration
def test_batched_prompts_generate_what_each_generates_alone(heldout, tmp_path):
    """Tokenizers often pad on the right; `ittt eval` tokenizes each prompt alone and left-pads
    the batch itself, so a row's answer does not depend on the rows beside it (right padding
    would continue the shorter rows after their padding). A byte-level BPE tokenizer makes the
    prompts of a batch differ in length, as real ones do."""
    import copy

    import torch

    import inplace_ttt
    from tests.tiny_gguf import byte_bpe_tokenizer
    from tests.tiny_hf import ttt_config

    tokenizer = byte_bpe_tokenizer([" ".join(WORDS)] + read_documents([str(heldout)]), vocab_size=400)
    assert tokenizer.padding_side == "right"
    model = inplace_ttt.convert(copy.deepcopy(tiny(vocab_size=len(tokenizer))), ttt_config(chunk_size=16))
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(model):
            layer.ttt.conv_weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "ttt")
    tokenizer.save_pretrained(tmp_path / "ttt")
    generated = {}
    for batch in (1, 4):
        settings = EvalSettings(
            models=[str(tmp_path / "ttt")],
            tasks=["niah_single", "vt"],
            lengths=[256],
            samples=4,
            data=[str(heldout)],
            tokens_per_forward=96,
            batch=batch,
            out=str(tmp_path / str(batch)),
        )
        evaluate(settings)
        ruler = json.loads((tmp_path / str(batch) / "results.json").read_text())["models"]["ttt"]["ruler"]
        generated[batch] = {task: [(o["tokens"], o["generated"]) for o in cells["256"]["outputs"]] for task, cells in ruler.items()}
    assert generated[4] == generated[1]
    assert all(len({tokens for tokens, _ in outputs}) > 1 for outputs in generated[4].values())  # rows of different lengths: padding happened


@pytest.mark.integration
def test_paired_differences_are_each_documents_loss_differences_averaged(models, heldout, tmp_path):
    """The paired numbers against a plain computation: each model's token losses from one full
    forward per document (no cache, no pieces), differenced document by document."""
    import torch
    from transformers import AutoTokenizer

    from inplace_ttt.eval.intervals import difference_interval
    from inplace_ttt.eval.report import signed
    from inplace_ttt.families.hf import load_causal_lm
    from tests.eval.conftest import full_nll

    base, ttt = map(str, models)
    settings = EvalSettings(
        models=[ttt, base], tasks=["loss", "sliding_window"], lengths=[128], data=[str(heldout)], tokens_per_forward=48, final_block=32, baseline="base"
    )
    report = evaluate(dataclasses.replace(settings, out=str(tmp_path))).read_text()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["baseline"] == "base" and "paired" not in results["models"]["base"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    docs = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in read_documents([str(heldout)])]
    reference = {name: load_causal_lm(path).eval() for name, path in (("base", base), ("ttt", ttt))}
    paired = results["models"]["ttt"]["paired"]

    nll = {name: [full_nll(model, d[:128]).double() for d in docs] for name, model in reference.items()}
    edges = results["models"]["ttt"]["loss_by_position"]["edges"]
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        part = slice(max(lo - 1, 0), hi - 1)  # nll[i] is the loss of the token at position i + 1 (i + 1 tokens before it)
        per_doc = [(a[part] - b[part]).sum().item() for a, b in zip(nll["ttt"], nll["base"])]
        plain = sum(per_doc) / sum(len(a[part]) for a in nll["ttt"])
        assert paired["loss_by_position"][k]["difference"] == pytest.approx(plain, abs=1e-5)
        assert f"| {lo}-{hi} |" in report and signed(paired["loss_by_position"][k], 4) in report

    block = 32
    for c in ("0", "96"):
        windows = [d[129 - int(c) - block - 1 : 129] for d in docs]  # each document cut to the longest length + 1 tokens
        per_doc = {name: [full_nll(model, w)[-block:].mean().item() for w in windows] for name, model in reference.items()}
        diffs = [a - b for a, b in zip(per_doc["ttt"], per_doc["base"])]
        assert paired["sliding_window"][c]["difference"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-5)
        stored = [results["models"][name]["sliding_window"]["contexts"][c]["per_document"] for name in ("ttt", "base")]
        assert stored[0] == pytest.approx(per_doc["ttt"], abs=1e-5) and stored[1] == pytest.approx(per_doc["base"], abs=1e-5)
        assert paired["sliding_window"][c]["interval"] == difference_interval(*stored)  # the interval of exactly those differences
    assert "| context | ttt | base | ttt - base | documents |" in report


@pytest.mark.integration
def test_a_gguf_checkpoint_with_documents_and_only_the_tasks_asked_for(heldout, tmp_path):
    """`--gguf-file` reads a GGUF folder (its tokenizer too) beside a plain copy of the same model:
    identical losses; `--documents 2` reads two of the three documents; `--tasks loss` runs the
    loss by position and nothing else, and the report speaks only of that."""
    from transformers import AutoTokenizer

    from tests.tiny_gguf import byte_bpe_tokenizer, write_gguf

    tokenizer = byte_bpe_tokenizer(read_documents([str(heldout)]), 300)
    model = tiny(vocab_size=300, tie_word_embeddings=True)
    (tmp_path / "gguf").mkdir()
    write_gguf(model, tmp_path / "gguf" / "tiny.gguf", tokenizer=tokenizer)  # no other file in the folder
    model.save_pretrained(tmp_path / "plain")
    # the tokenizer as read from the GGUF file, as `ittt train --gguf-file` saves it with what it trains
    AutoTokenizer.from_pretrained(tmp_path / "gguf", gguf_file="tiny.gguf").save_pretrained(tmp_path / "plain")
    args = ["eval", "--model", str(tmp_path / "plain"), "--model", str(tmp_path / "gguf"), "--gguf-file", "tiny.gguf", "--tasks", "loss"]
    assert main([*args, "--lengths", "64", "--data", str(heldout), "--documents", "2", "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    plain, gguf = results["models"]["plain"], results["models"]["gguf"]
    assert (plain["gguf_file"], gguf["gguf_file"]) == (None, "tiny.gguf")
    assert results["documents"] == 2 and sum(gguf["loss_by_position"]["tokens"]) == 2 * 64
    assert gguf["loss_by_position"]["loss"] == pytest.approx(plain["loss_by_position"]["loss"], abs=1e-5)
    assert all(abs(p["difference"]) < 1e-5 for p in gguf["paired"]["loss_by_position"])
    assert list(gguf["task_seconds"]) == ["loss"]
    assert (
        sorted(k for k in gguf if k not in ("path", "gguf_file", "ttt", "seconds", "task_seconds")) == ["loss_by_position", "paired", "ruler"]
        and gguf["ruler"] == {}
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Tasks run: loss." in report and "Held-out text: the first 65 tokens of each of 2 documents of " in report
    assert "samples" not in report and "## Sliding window" not in report and "clip_tau" not in report
    assert f"`gguf` ({tmp_path / 'gguf'}, GGUF tiny.gguf)" in report


@pytest.mark.integration
def test_the_report_says_what_clipping_keeps_and_warns_when_it_keeps_nothing(models, heldout, tmp_path):
    """A τ that removes nearly every update is named in the report with a warning; a τ that never
    binds keeps everything (factor 1) and warns of nothing; without --clip-tau nothing is measured."""
    kept = {}
    for tau in ("1e-9", "1e6", None):
        out = tmp_path / str(tau)
        args = ["eval", "--model", str(models[1]), "--tasks", "loss", "--lengths", "256", "--data", str(heldout), "--out", str(out)]
        assert main(args + (["--clip-tau", tau] if tau else [])) == 0
        results = json.loads((out / "results.json").read_text())
        kept[tau] = (results["models"][next(iter(results["models"]))].get("clipping"), (out / "report.md").read_text())
    (tiny_tau, tiny_report), (huge_tau, huge_report), (none, none_report) = kept.values()
    assert tiny_tau["mean_factor"] < 0.05 and tiny_tau["warnings"] and "**Warning:**" in tiny_report and "Clipping kept a mean" in tiny_report
    assert huge_tau["mean_factor"] == 1.0 and not huge_tau["warnings"] and "**Warning:**" not in huge_report
    assert none is None and "Clipping kept" not in none_report
