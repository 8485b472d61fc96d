"""lm-evaluation-harness evaluates a converted folder, offline, through its own command line: `lm-eval
--model hf` with ``trust_remote_code=True`` in a process that never imported this package, and `ittt
lm-eval` without it. Two tasks the test writes (a loglikelihood one, a generation one), each score
equal to the same model scored here directly, at batch size 1 and 4 (right-padded loglikelihood rows,
left-padded generation rows), and with inference clipping passed in ``--model_args``."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import inplace_ttt
from tests.tiny_hf import VOCAB, converted, tiny_tokenizer

pytestmark = pytest.mark.integration

WORDS = [f"w{i}" for i in range(VOCAB - 4)]  # every id of the tiny model decodes to a word
NEW = 6
CLIP = 0.1  # changes these scores, yet leaves the fast weights at work


def write_tasks(root):
    """Two lm-eval tasks over local jsonl files: `ittt_mc` (multiple choice: loglikelihoods) and `ittt_gen` (greedy generation)."""
    rng = random.Random(0)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    mc = [{"context": text(5 + 4 * i), "choices": [text(2), text(3), text(1)], "label": i % 3} for i in range(6)]
    gen = [{"prompt": text(3 + 5 * i), "answer": text(2)} for i in range(6)]
    for name, docs in (("mc", mc), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\ntarget_delimiter: ' '\n"
    (root / "mc.yaml").write_text(
        "task: ittt_mc\n"
        + common.format(root / "mc.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    (root / "gen.yaml").write_text(
        "task: ittt_gen\n"
        + common.format(root / "gen.jsonl")
        + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        + f"generation_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: {NEW}\n  do_sample: false\n"
        + "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return mc, gen


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    folder = root / "ittt"
    converted("llama").save_pretrained(folder)
    tiny_tokenizer(WORDS).save_pretrained(folder)
    (root / "tasks").mkdir()
    mc, gen = write_tasks(root / "tasks")
    return root, folder, mc, gen


@pytest.fixture(scope="module")
def direct(setup):
    """The scores computed here with the model itself, in float64, unclipped (None) and clipped at
    CLIP: each choice's loglikelihood, each greedy generation."""
    _, folder, mc, gen = setup
    model = inplace_ttt.from_pretrained(folder, dtype=torch.float64).eval()
    tokenizer = tiny_tokenizer(WORDS)

    def loglikelihood(context, continuation):
        n = len(tokenizer(context, add_special_tokens=False).input_ids)
        ids = torch.tensor(tokenizer(f"{context} {continuation}", add_special_tokens=False).input_ids)
        with torch.no_grad():
            logprobs = F.log_softmax(model(input_ids=ids[None, :-1]).logits[0], -1)
        return logprobs[torch.arange(n - 1, len(ids) - 1), ids[n:]].sum().item()

    def generation(prompt):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def scores():
        return [[loglikelihood(d["context"], c) for c in d["choices"]] for d in mc], [generation(d["prompt"]) for d in gen]

    unclipped = scores()
    with inplace_ttt.clip_tau(model, CLIP):
        clipped = scores()
    assert max(abs(a - b) for x, y in zip(unclipped[0], clipped[0]) for a, b in zip(x, y)) > 1e-3  # the clipped run can fail
    return {None: unclipped, CLIP: clipped}


def run(command, root, out):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf-home"), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(command, env=env, check=True, timeout=600)
    return {p.stem.rsplit("_", 1)[0]: [json.loads(line) for line in p.read_text().splitlines()] for p in out.rglob("samples_*.jsonl")}


LM_EVAL = [sys.executable, "-m", "lm_eval"]
ITTT_LM_EVAL = [sys.executable, "-m", "inplace_ttt.cli", "lm-eval"]


@pytest.mark.parametrize(
    "batch,entry,model_args,clip",
    [
        (1, LM_EVAL, "trust_remote_code=True,dtype=float64", None),
        (4, ITTT_LM_EVAL, "dtype=float64", None),
        (4, ITTT_LM_EVAL, f"dtype=float64,clip_tau={CLIP}", CLIP),
    ],
    ids=["lm_eval-trust_remote_code-batch1", "ittt_lm-eval-batch4", "ittt_lm-eval-batch4-clip_tau"],
)
def test_scores_equal_the_model_scored_directly(setup, direct, batch, entry, model_args, clip):
    root, folder, mc, gen = setup
    lls, generations = direct[clip]
    out = root / f"out-{batch}-{clip}"
    command = [
        *entry,
        "--model",
        "hf",
        "--model_args",
        f"pretrained={folder},{model_args}",
        "--tasks",
        "ittt_mc,ittt_gen",
        "--include_path",
        str(root / "tasks"),
    ]
    samples = run([*command, "--batch_size", str(batch), "--device", "cpu", "--output_path", str(out), "--log_samples"], root, out)

    scored = sorted(samples["samples_ittt_mc"], key=lambda s: s["doc_id"])
    assert len(scored) == len(mc)
    for sample, expected in zip(scored, lls):
        got = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert got == pytest.approx(expected, abs=1e-9, rel=0)
        assert sample["acc"] == float(max(range(3), key=expected.__getitem__) == sample["doc"]["label"])
    generated = sorted(samples["samples_ittt_gen"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in generated] == generations
