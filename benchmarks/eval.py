"""Speed of `ittt eval`: samples batched (`--batch 8`, the default) against one at a time (`--batch 1`).

Two random models of one shape (default: SmolLM-135M's, 30 layers, hidden 576, vocabulary 49152),
one plain and one converted (TTT on every 6th layer), saved with the embedded base model's
tokenizer; then the same `evaluate` call (every task, `--samples` per task and length, `--lengths`)
once per batch size, in one process, timed from start to report. The results must agree: batching
changes how rows are grouped, not what is computed.

    python benchmarks/eval.py                                   # the 135M shape (slow on 2 cores)
    python benchmarks/eval.py --layers 6 --hidden 256 --intermediate 768 --heads 4 --kv-heads 4
"""

from __future__ import annotations

import argparse
import copy
import json
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
    p.add_argument("--batches", default="1,8", help="batch sizes to time")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = save_models(args, root)
        params = AutoModelForCausalLM.from_pretrained(models[0]).num_parameters() / 1e6
        tasks = None if args.tasks == "all" else args.tasks.split(",")
        rows, outputs = [], {}
        for batch in (int(b) for b in args.batches.split(",")):
            settings = EvalSettings(
                models=models,
                lengths=parse_lengths(args.lengths),
                samples=args.samples,
                batch=batch,
                out=str(root / f"out{batch}"),
                **({"tasks": tasks} if tasks else {}),
            )
            start = time.perf_counter()
            evaluate(settings)
            rows.append((batch, time.perf_counter() - start))
            results = json.loads((root / f"out{batch}" / "results.json").read_text())
            outputs[batch] = {n: m["ruler"] for n, m in results["models"].items()}
    same = all(o == next(iter(outputs.values())) for o in outputs.values())
    print(
        f"# two {params:.0f}M-parameter Llamas ({args.layers} layers, hidden {args.hidden}), plain and TTT; tasks {args.tasks}, "
        f"lengths {args.lengths}, {args.samples} samples; torch {torch.__version__}, {args.threads} threads"
    )
    print("| batch | seconds | x batch 1 |")
    print("|---|---|---|")
    for batch, seconds in rows:
        print(f"| {batch} | {seconds:.0f} | {rows[0][1] / seconds:.2f} |")
    print(f"generated answers identical across batch sizes: {same}")


if __name__ == "__main__":
    main()
