"""The mechanism check: associative recall beyond the attention window, with and without In-Place TTT.

The same small sliding-window model (transformers' Mistral, built by `ittt pretrain`'s
`build_model`), from the same random start, trained from scratch on the same recall sequences
(`inplace_ttt.eval.recall`: key-value pairs first, filler longer than the window, then every key
queried), once plain and once with In-Place TTT; then both are scored on unseen sequences. The
pairs sit further back than the model's whole receptive field (layers x window), so attention
alone cannot reach them: the plain model must sit at chance, and only fast weights can recall.

Besides the table at the training length it prints the capacity curve (accuracy against the
number of pairs at the training length, and against the gap at the training number of pairs),
and accuracy by the stored pair's slot; `--profile` splits one training step's time into the
TTT operator, the target's convolution and the rest. `--json FILE` keeps everything.

Why recall is what it is: per TTT layer, how much the fast weight's read weighs the queried key's
own pair against the other stored keys (`selectivity`; 1.0: it cannot tell keys apart and returns
a blend of every stored value), at the end and every `--probe-every` steps of training. Trained
from scratch with every weight free, this small model makes all keys alike within 25 steps and
ends at 1 / pairs; by default the keys are therefore kept at their random start (`freeze_keys`,
in both models), and `--no-freeze-keys` shows the collapse (docs/benchmarks.md).

    python benchmarks/recall.py                  # about 10 CPU minutes: TTT ~99% at 8 pairs, plain at chance
    python benchmarks/recall.py --models ttt --no-freeze-keys --steps 300 --eta 1 --json /tmp/eta1.json   # one factor
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from inplace_ttt import TTTConfig, ttt_layers
from inplace_ttt.eval.intervals import mean_interval
from inplace_ttt.eval.recall import chance, make_recall, recall_hits, stored_slot
from inplace_ttt.train.pretrain import ArchitectureConfig, build_model
from inplace_ttt.train.trainer import clip_groups


def word_tokenizer(words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 .. w{words-1}``: keys, values and filler a third each."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": 4 + i for i in range(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def batches(tokenizer, args):
    """Training rows: loss only on the queried values (as Zoology trains MQAR)."""
    samples = make_recall(tokenizer, args.length, args.steps * args.batch, seed=1 + args.seed, pairs=args.pairs)
    for k in range(0, len(samples), args.batch):
        group = samples[k : k + args.batch]
        ids = torch.tensor([s.ids for s in group])
        labels = torch.full_like(ids, -100)
        for row, s in enumerate(group):
            values = torch.tensor(s.queries) + 1
            labels[row, values] = ids[row, values]
        yield ids, labels


def build(tokenizer, args, ttt: TTTConfig | None):
    arch = ArchitectureConfig(
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=args.hidden // 32,
        max_position_embeddings=4 * max(args.length, *args.curve_lengths),
        sliding_window=args.window,
    )
    torch.manual_seed(args.seed)  # the same start for both: TTT adds its own (zero-started) parameters only
    model = build_model(arch, tokenizer, ttt).train()
    if args.freeze_keys:
        freeze_keys(model, list(range(args.layers)) if args.ttt_layers == "all" else sorted(int(x) for x in args.ttt_layers.split(",")))
    ttt_params = [p for n, p in model.named_parameters() if ".ttt." in n]
    others = [p for n, p in model.named_parameters() if ".ttt." not in n and p.requires_grad]
    groups = [{"params": others}] + ([{"params": ttt_params, "lr": args.ttt_lr}] if ttt_params else [])
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.0)
    return model, opt


def freeze_keys(model, ttt: list[int]) -> None:
    """Keep the fast weight's keys ``Z = act(gate x) * (up x)`` at their random start, which tells
    tokens apart: the gate and up projections of the TTT layers `ttt` (indices), and everything the
    first one's ``x`` is made of (the token embeddings, the layers below it, its own norms and
    attention). The plain model gets the same parts frozen, so the two still differ in TTT alone."""
    layers = model.model.layers
    first = layers[ttt[0]]
    frozen = [model.model.embed_tokens, *layers[: ttt[0]], first.input_layernorm, first.self_attn, first.post_attention_layernorm]
    frozen += [getattr(layers[i].mlp, name) for i in ttt for name in ("gate_proj", "up_proj")]
    for module in frozen:
        module.requires_grad_(False)


def clip(model, how: str) -> None:
    """`global`: one clip at 1.0 over every gradient; `apart`: the TTT parameters clipped as their own
    group (what `ittt train` does by default, docs/training.md)."""
    if how == "global":
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    else:
        clip_groups(model.named_parameters(), 1.0, 1.0)


def train(tokenizer, args, ttt: TTTConfig | None):
    model, opt = build(tokenizer, args, ttt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    step_seconds, losses, keys = [], [], {}
    for ids, labels in batches(tokenizer, args):
        if ttt is not None and args.probe_every and len(losses) % args.probe_every == 0:
            keys[len(losses)] = selectivity(model.eval(), tokenizer, args)
            model.train()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        clip(model, args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            print(f"    step {len(losses)}: loss {statistics.fmean(losses[-50:]):.3f}", flush=True)
    return model.eval(), step_seconds, losses, keys


def accuracy(hits: list[list[bool]]) -> dict:
    """Mean share of right answers per sample (%), with its 95% interval over samples."""
    scores = [sum(h) / len(h) for h in hits]
    lo, hi = mean_interval(scores)
    return {"accuracy": 100 * statistics.fmean(scores), "interval": [100 * lo, 100 * hi]}


def cell(a: dict) -> str:
    return f"{a['accuracy']:.1f} [{a['interval'][0]:.1f}, {a['interval'][1]:.1f}]"


def evaluate(model, tokenizer, args) -> dict:
    """Accuracy at the training length, against pairs, against the gap, and by stored slot."""

    def scored(n: int, pairs: int):
        samples = make_recall(tokenizer, n, args.eval_samples, seed=0, pairs=pairs)
        return samples, recall_hits(model, samples, piece=n, batch=16)

    samples, hits = scored(args.length, args.pairs)
    slots = [[] for _ in range(args.pairs)]
    for s, h in zip(samples, hits):
        for slot, hit in zip(stored_slot(s), h):
            slots[slot].append(hit)
    return {
        "at_training_length": accuracy(hits),
        "by_pairs": {p: accuracy(scored(args.length, p)[1]) for p in args.curve_pairs},
        "by_gap": {n - 4 * args.pairs: accuracy(scored(n, args.pairs)[1]) for n in args.curve_lengths},
        "by_slot": [100 * statistics.fmean(s) for s in slots],
    }


def selectivity(model, tokenizer, args) -> list[dict]:
    """Why recall is what it is, read from the fast weight's own keys.

    A fast weight reads ``sum_t v_t (z_t . z_q)``: each stored token's target ``v_t`` weighted by how
    its hidden activation ``z_t`` (the gated MLP's, at the TTT layer) aligns with the query's ``z_q``.
    Per TTT layer, over unseen sequences: the weight of the queried key's own pair against the mean
    weight of the other stored keys (``match/other``: 1 means the memory cannot tell keys apart, so
    it returns a blend of every stored value), and the share of the whole read that comes from the
    right pair rather than from the other keys and the filler (``share``)."""
    samples = make_recall(tokenizer, args.length, min(args.eval_samples, 32), seed=0, pairs=args.pairs)
    layers = [layer for _, layer in ttt_layers(model)]
    seen: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, mod.spec.hidden(mod, inp[0]))) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([s.ids for s in samples]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for i, layer in enumerate(layers):
        ratios, shares = [], []
        for row, s in enumerate(samples):
            z = seen[i][row].double()
            stored = z[0 : 2 * args.pairs : 2]  # the stored keys (their targets are the values after them)
            before = z[: min(s.queries)]  # every token written before the queries
            for q in s.queries:
                slot = stored_slot(s)[s.queries.index(q)]
                dots = stored @ z[q]
                others = torch.cat([dots[:slot], dots[slot + 1 :]])
                ratios.append((dots[slot] / others.abs().mean()).item() if len(others) else float("nan"))
                shares.append((dots[slot].abs() / (before @ z[q]).abs().sum()).item())
        out.append({"layer": layer.layer_idx, "match/other": statistics.median(ratios), "share": statistics.median(shares)})
    return out


def profile_step(tokenizer, args, ttt: TTTConfig | None) -> dict:
    """Seconds of one training step (after two warm-up steps), split by the profiler into the TTT
    operator (forward and backward), the target's chunk convolution, and everything else."""
    from torch.profiler import ProfilerActivity, profile

    model, opt = build(tokenizer, args, ttt)
    ids, labels = next(batches(tokenizer, argparse.Namespace(**{**vars(args), "steps": 1})))

    def step():
        model(input_ids=ids, labels=labels, use_cache=False).loss.backward()
        clip(model, args.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(), step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
    parts = {"op": 0.0, "target conv": 0.0}
    for event in prof.key_averages():
        if "ChunkInPlaceTTTFunction" in event.key:
            parts["op"] += event.cpu_time_total / 1e6
        elif "_ChunkConv" in event.key:
            parts["target conv"] += event.cpu_time_total / 1e6
    return {"step_s": total, **parts, "rest": total - sum(parts.values())}


def main(argv: list[str] | None = None) -> dict:
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--words", type=int, default=192, help="vocabulary: a third keys, a third values, a third filler")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=32, help="sliding attention window (tokens)")
    parser.add_argument("--ttt-layers", default="all", help="'all' or comma-separated layer indices")
    parser.add_argument("--chunk", type=int, default=32, help="TTT chunk size")
    parser.add_argument("--eta", type=float, default=3.0, help="TTT fast-weight learning rate")
    parser.add_argument("--target-init", default="identity")
    parser.add_argument("--target", default="token_embeddings", help="the authors' advice for training from scratch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ttt-lr", type=float, default=3e-3, help="AdamW learning rate of the TTT parameters")
    parser.add_argument("--clip", choices=["global", "apart"], default="global", help="gradient clipping at 1.0: one global clip, or the TTT parameters apart")
    parser.add_argument("--models", choices=["both", "ttt", "swa"], default="both", help="train both, or one (a factor sweep needs only TTT)")
    parser.add_argument("--curve-pairs", type=ints, default=[1, 2, 4, 8, 16, 32], help="numbers of pairs for the capacity curve (at --length)")
    parser.add_argument("--curve-lengths", type=ints, default=[96, 128, 256, 512, 1024], help="lengths for the gap curve (at --pairs)")
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument(
        "--probe-every", type=int, default=50, help="read the fast weight's key selectivity every this many training steps (0: at the end only)"
    )
    parser.add_argument(
        "--freeze-keys",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the fast weight's keys at their random start (`freeze_keys`); --no-freeze-keys trains them, and they collapse",
    )
    parser.add_argument("--profile", action="store_true", help="also profile one training step of each model")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument(
        "--seed", type=int, default=0, help="the models' random start, and the training sequences (seed + 1); the scored sequences stay the same"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = word_tokenizer(args.words)
    layers = "all" if args.ttt_layers == "all" else ints(args.ttt_layers)
    ttt = TTTConfig(layers=layers, chunk_size=args.chunk, ttt_lr=args.eta, target_source=args.target, target_init=args.target_init)
    reach = args.layers * (args.window - 1)
    print(
        f"{args.layers} layers x window {args.window}: attention reaches {reach} tokens back; pairs sit {args.length - 4 * args.pairs}+ "
        f"tokens before their queries at length {args.length}. {args.steps} steps x {args.batch} rows, seed {args.seed}, {args.threads} threads",
        flush=True,
    )
    chosen = {"both": (("SWA", None), ("SWA + TTT", ttt)), "ttt": (("SWA + TTT", ttt),), "swa": (("SWA", None),)}[args.models]
    results = {"args": vars(args), "chance": 100 * chance(tokenizer), "models": {}}
    for name, config in chosen:
        started = time.perf_counter()
        model, step_seconds, losses, keys = train(tokenizer, args, config)
        wall = time.perf_counter() - started
        entry = {"train_s": wall, "tokens_per_s": args.batch * args.length / statistics.median(step_seconds), "final_loss": statistics.fmean(losses[-20:])}
        entry |= evaluate(model, tokenizer, args)
        if config is not None:
            entry["selectivity"] = selectivity(model, tokenizer, args)
            entry["selectivity_during_training"] = keys
        if args.profile:
            entry["profile"] = profile_step(tokenizer, args, config)
        results["models"][name] = entry
        print(f"  {name}: trained in {wall:.0f} s, last-20-step loss {entry['final_loss']:.3f}, recall {cell(entry['at_training_length'])}", flush=True)
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def report(results: dict, args) -> None:
    models = results["models"]
    names = list(models)
    print("\n| model | train s | tokens/s (median step) | final loss | recall % at the training length (95% CI) |")
    print("|---|---|---|---|---|")
    for name, m in models.items():
        print(f"| {name} | {m['train_s']:.0f} | {m['tokens_per_s']:.0f} | {m['final_loss']:.3f} | {cell(m['at_training_length'])} |")
    print(f"\nCapacity against the number of pairs (length {args.length}; recall %, 95% CI):\n")
    print("| pairs | gap | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for p in args.curve_pairs:
        print(f"| {p} | {args.length - 4 * p} | " + " | ".join(cell(models[n]["by_pairs"][p]) for n in names) + " |")
    print(f"\nAgainst the gap ({args.pairs} pairs; recall %, 95% CI; attention reaches {args.layers * (args.window - 1)} tokens):\n")
    print("| gap | length | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for n in args.curve_lengths:
        gap = n - 4 * args.pairs
        print(f"| {gap} | {n} | " + " | ".join(cell(models[m]["by_gap"][gap]) for m in names) + " |")
    print(
        "\nRecall % by the stored pair's slot (0: the first pair of the sequence): "
        + "; ".join(f"{n}: " + " ".join(f"{a:.0f}" for a in m["by_slot"]) for n, m in models.items())
    )
    print(f"chance: {results['chance']:.2f}%")
    for name, m in models.items():
        for layer in m.get("selectivity", []):
            print(
                f"{name}, TTT layer {layer['layer']}: the queried key's own pair weighs {layer['match/other']:.2f}x another stored key "
                f"in the fast weight's read, and is {100 * layer['share']:.1f}% of everything the read sums (medians over queries)"
            )
    for name, m in models.items():
        during = m.get("selectivity_during_training")
        if during:
            print(f"\n{name}: the queried key's own pair against another stored key (match/other) during training:\n")
            layers = [f"layer {x['layer']}" for x in m["selectivity"]]
            print("| step | " + " | ".join(layers) + " |\n|---|" + "---|" * len(layers))
            for step, per_layer in [*during.items(), (args.steps, m["selectivity"])]:
                print(f"| {step} | " + " | ".join(f"{x['match/other']:.2f}" for x in per_layer) + " |")
    if len(names) == 2:
        print(f"SWA + TTT training throughput {models[names[1]]['tokens_per_s'] / models[names[0]]['tokens_per_s']:.3f}x SWA's")
    for name, m in models.items():
        if "profile" in m:
            p = m["profile"]
            print(f"one step of {name}: {p['step_s']:.3f} s = op {p['op']:.3f} + target conv {p['target conv']:.3f} + rest {p['rest']:.3f}")


if __name__ == "__main__":
    main()
