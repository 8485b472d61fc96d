"""The mechanism check: associative recall beyond the attention window, with and without In-Place TTT.

The same small sliding-window model (transformers' Mistral, built by `ittt pretrain`'s
`build_model`), from the same random start, trained from scratch on the same recall sequences
(`inplace_ttt.eval.recall`: key-value pairs first, filler longer than the window, then every key
queried), once plain and once with In-Place TTT; then both are scored on unseen sequences. The
pairs sit further back than the model's whole receptive field (layers x window), so attention
alone cannot reach them: the plain model must sit at chance, and only fast weights can recall.

    python benchmarks/recall.py                  # a few CPU minutes
    python benchmarks/recall.py --steps 600 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from inplace_ttt import TTTConfig
from inplace_ttt.eval.intervals import mean_interval
from inplace_ttt.eval.recall import chance, make_recall, recall_scores
from inplace_ttt.train.pretrain import ArchitectureConfig, build_model


def word_tokenizer(words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 .. w{words-1}``: keys, values and filler a third each."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": 4 + i for i in range(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def batches(tokenizer, args):
    """Training rows: loss only on the queried values (as Zoology trains MQAR)."""
    samples = make_recall(tokenizer, args.length, args.steps * args.batch, seed=1, pairs=args.pairs)
    for k in range(0, len(samples), args.batch):
        group = samples[k : k + args.batch]
        ids = torch.tensor([s.ids for s in group])
        labels = torch.full_like(ids, -100)
        for row, s in enumerate(group):
            values = torch.tensor(s.queries) + 1
            labels[row, values] = ids[row, values]
        yield ids, labels


def train(tokenizer, args, ttt: TTTConfig | None):
    arch = ArchitectureConfig(
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=args.hidden // 32,
        max_position_embeddings=4 * args.length,
        sliding_window=args.window,
    )
    torch.manual_seed(0)  # the same start for both: TTT adds its own (zero-started) parameters only
    model = build_model(arch, tokenizer, ttt).train()
    ttt_params = [p for n, p in model.named_parameters() if ".ttt." in n]
    others = [p for n, p in model.named_parameters() if ".ttt." not in n]
    groups = [{"params": others}] + ([{"params": ttt_params, "lr": args.ttt_lr}] if ttt_params else [])
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    step_seconds, losses = [], []
    for ids, labels in batches(tokenizer, args):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    return model.eval(), step_seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--words", type=int, default=192, help="vocabulary: a third keys, a third values, a third filler")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=32, help="sliding attention window (tokens)")
    parser.add_argument("--chunk", type=int, default=32, help="TTT chunk size")
    parser.add_argument("--eta", type=float, default=3.0, help="TTT fast-weight learning rate")
    parser.add_argument("--target-init", default="identity")
    parser.add_argument("--target", default="token_embeddings", help="the authors' advice for training from scratch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ttt-lr", type=float, default=3e-3, help="AdamW learning rate of the TTT parameters")
    parser.add_argument("--eval-lengths", default="256,512")
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = word_tokenizer(args.words)
    ttt = TTTConfig(layers="all", chunk_size=args.chunk, ttt_lr=args.eta, target_source=args.target, target_init=args.target_init)
    lengths = [int(n) for n in args.eval_lengths.split(",")]
    reach = args.layers * (args.window - 1)
    print(
        f"{args.layers} layers x window {args.window}: attention reaches {reach} tokens back; pairs sit {args.length - 4 * args.pairs}+ "
        f"tokens before their queries at length {args.length}. {args.steps} steps x {args.batch} rows, seed 0, {args.threads} threads",
        flush=True,
    )
    rows = []
    for name, config in (("SWA", None), ("SWA + TTT", ttt)):
        started = time.perf_counter()
        model, step_seconds, losses = train(tokenizer, args, config)
        wall = time.perf_counter() - started
        accs = []
        for n in lengths:
            scores = recall_scores(model, make_recall(tokenizer, n, args.eval_samples, seed=0, pairs=args.pairs), piece=n, batch=16)
            lo, hi = mean_interval(scores)
            accs.append(f"{100 * statistics.fmean(scores):.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        tps = args.batch * args.length / statistics.median(step_seconds)
        rows.append((name, wall, tps, statistics.fmean(losses[-20:]), accs))
        print(f"  {name}: trained in {wall:.0f} s, last-20-step loss {rows[-1][3]:.3f}", flush=True)
    print()
    print("| model | train s | tokens/s (median step) | final loss | " + " | ".join(f"recall % at {n} (95% CI)" for n in lengths) + " |")
    print("|---|---|---|---|" + "---|" * len(lengths))
    for name, wall, tps, loss, accs in rows:
        print(f"| {name} | {wall:.0f} | {tps:.0f} | {loss:.3f} | " + " | ".join(accs) + " |")
    print(f"\nchance: {100 * chance(tokenizer):.2f}%; SWA + TTT training throughput {rows[1][2] / rows[0][2]:.3f}x SWA's")


if __name__ == "__main__":
    main()
