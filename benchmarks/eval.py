"""Speed of `ittt eval` at the 135M shape: the whole comparison of two models, and where the time goes.

Two random models of one shape (default: SmolLM-135M's, 30 layers, hidden 576, 9 heads, 3 kv
heads, vocabulary 49152), one plain and one converted (TTT on every 6th layer, chunk 256), saved
with the embedded base model's tokenizer; then the same `evaluate` call (`--tasks`, default every
task, `--samples` per task and length, `--lengths`) once per batch size in `--batches`, in one
process, timed from start to report, with each model's seconds per task (``task_seconds``). The
target (issue 26): both models, every task, 2 samples, 1k and 2k, in at most 600 s on 2 cores.
With several batch sizes the results must agree: batching changes how rows are grouped, not what
is computed.

    python benchmarks/eval.py --threads 2                       # the 135M shape (minutes on 2 cores)
    python benchmarks/eval.py --layers 6 --hidden 256 --intermediate 768 --heads 4 --kv-heads 4
    python benchmarks/eval.py --threads 1 --forward-costs      # CPU seconds of one 2k forward, with and without logits

`--forward-costs` times (CPU seconds of this process, so that a loaded machine skews it less than
the wall clock) one forward of a 2048-token row through each model with every position's logits
and the loss (what the loss task needs) and with none (a prompt's prefill, the context before a
sliding-window block): what making logits only where read saves.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

import inplace_ttt
from inplace_ttt.assets import base_model_dir
from inplace_ttt.eval.runner import EvalSettings, evaluate, parse_lengths


def save_models(args, root: Path) -> list[str]:
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    ttt = inplace_ttt.convert(copy.deepcopy(base), inplace_ttt.TTTConfig(layers="every 6", chunk_size=256))
    with torch.no_grad():  # trained-looking fast weights, so that the TTT path really runs
        for _, layer in inplace_ttt.ttt_layers(ttt):
            layer.ttt.conv_weight.normal_(0, 1e-3)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
    paths = []
    for name, model in (("plain", base), ("ttt", ttt)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths


TARGET_SECONDS = 600


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def forward_costs(models: list[str], length: int = 2048, repeats: int = 3) -> None:
    """CPU seconds (median of `repeats`) of one `length`-token forward with every logit and the
    loss, and with no logit (`logits_to_keep=1`), per model."""
    import statistics

    import torch.nn.functional as F

    from inplace_ttt.families.hf import load_causal_lm

    ids = torch.randint(0, 8000, (1, length), generator=torch.Generator().manual_seed(0))
    print(f"| model | {length} tokens, every logit + loss (CPU s) | no logit (CPU s) | ratio |\n|---|---|---|---|")
    for path in models:
        model = load_causal_lm(path).eval()
        times = {}
        for name, keep in (("all", 0), ("none", 1)):
            runs = []
            for _ in range(repeats):
                start = cpu_seconds()
                with torch.inference_mode():
                    logits = model(input_ids=ids, logits_to_keep=keep).logits
                    if not keep:
                        F.cross_entropy(logits[0, :-1], ids[0, 1:])
                runs.append(cpu_seconds() - start)
            times[name] = statistics.median(runs)
        print(f"| {Path(path).name} | {times['all']:.2f} | {times['none']:.2f} | {times['none'] / times['all']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--lengths", default="1k,2k")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--tasks", default="all")
    p.add_argument("--batches", default="8", help="batch sizes to time, e.g. 1,8")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--forward-costs", action="store_true", help="time one 2k forward with and without logits, not the whole evaluation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = save_models(args, root)
        if args.forward_costs:
            forward_costs(models)
            return
        params = AutoModelForCausalLM.from_pretrained(models[0]).num_parameters() / 1e6
        tasks = None if args.tasks == "all" else args.tasks.split(",")
        rows, outputs, per_task = [], {}, {}
        for batch in (int(b) for b in args.batches.split(",")):
            settings = EvalSettings(
                models=models,
                lengths=parse_lengths(args.lengths),
                samples=args.samples,
                batch=batch,
                out=str(root / f"out{batch}"),
                **({"tasks": tasks} if tasks else {}),
            )
            start, cpu = time.perf_counter(), cpu_seconds()
            evaluate(settings)
            rows.append((batch, time.perf_counter() - start, cpu_seconds() - cpu))
            results = json.loads((root / f"out{batch}" / "results.json").read_text())
            outputs[batch] = {n: m["ruler"] for n, m in results["models"].items()}
            per_task[batch] = {n: m["task_seconds"] for n, m in results["models"].items()}
    print(
        f"# two {params:.0f}M-parameter Llamas ({args.layers} layers, hidden {args.hidden}), plain and TTT; tasks {args.tasks}, "
        f"lengths {args.lengths}, {args.samples} samples; torch {torch.__version__}, {args.threads} threads"
    )
    print("| batch | seconds | CPU seconds | x first | target <= 600 s |")
    print("|---|---|---|---|---|")
    for batch, seconds, cpu in rows:
        print(f"| {batch} | {seconds:.0f} | {cpu:.0f} | {rows[0][1] / seconds:.2f} | {'met' if seconds <= TARGET_SECONDS else 'not met'} |")
    batch = rows[-1][0]
    names = list(per_task[batch])
    print(f"\nseconds per task at batch {batch}:\n\n| task | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for task in per_task[batch][names[0]]:
        print(f"| {task} | " + " | ".join(f"{per_task[batch][n][task]:.1f}" for n in names) + " |")
    if len(outputs) > 1:
        print(f"generated answers identical across batch sizes: {all(o == next(iter(outputs.values())) for o in outputs.values())}")


if __name__ == "__main__":
    main()
