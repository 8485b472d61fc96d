"""`ittt`: the command line."""

from __future__ import annotations

import argparse
import re
import sys

from .config import TARGET_INITS


def _demo(args: argparse.Namespace) -> int:
    """The whole pipeline on the embedded model and corpus (see `inplace_ttt.demo`); flags left
    out keep `DemoSettings`' defaults."""
    from .demo import DemoSettings, run_demo
    from .eval.runner import parse_lengths

    defaults = DemoSettings()
    given = lambda name: getattr(args, name) is not None  # noqa: E731
    if given("layers") and re.fullmatch(r"[\d,\s]+", args.layers):
        args.layers = [int(i) for i in args.layers.split(",") if i.strip()]
    ttt = defaults.ttt.replace(**{k: getattr(args, k) for k in ("layers", "chunk_size", "ttt_lr", "target_init") if given(k)})
    kwargs = {
        k: getattr(args, k)
        for k in ("out", "steps", "row_length", "batch_size", "learning_rate", "ttt_learning_rate", "samples", "passages", "seed")
        if given(k)
    }
    if given("lengths"):
        kwargs["eval_lengths"] = parse_lengths(args.lengths)
    run_demo(DemoSettings(ttt=ttt, **kwargs))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """Load a converted model and its tokenizer, read some text, run `inplace_ttt.doctor`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import from_pretrained, ttt_layers
    from .doctor import doctor

    model = from_pretrained(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    chunk = max(layer.chunk_size for _, layer in ttt_layers(model))
    length = args.length or 3 * chunk
    ids = tokenizer(_read_text(args.data), return_tensors="pt", add_special_tokens=False).input_ids[0]
    rows = max(1, min(args.rows, len(ids) // length))
    ids = ids[: rows * length].view(rows, -1)
    base = AutoModelForCausalLM.from_pretrained(args.base) if args.base else None
    model.train(not args.inference)
    report = doctor(model, ids, base, training=not args.inference)
    print(f"doctor: {args.model_dir} on {rows} x {ids.shape[1]} tokens of {args.data}")
    print(report)
    return 0 if report.ok else 1


def _read_text(path: str) -> str:
    """The text of a .txt file, or the "text" fields of a .jsonl file."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"ittt: no such data file: {path}")
    if p.suffix == ".jsonl":
        return "\n\n".join(json.loads(line)["text"] for line in p.read_text().splitlines() if line.strip())
    return p.read_text()


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .train.config import load_config
    from .train.trainer import train

    config = load_config(args.config, overrides)
    final = train(config, resume=args.resume)
    print(f"final model: {final}")
    return 0


def _pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from .train.config import load_config
    from .train.pretrain import PretrainConfig, pretrain

    final = pretrain(load_config(args.config, overrides, schema=PretrainConfig), resume=args.resume)
    print(f"final model: {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval.runner import ALL_TASKS, EvalSettings, evaluate, parse_lengths

    tasks = list(ALL_TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    settings = EvalSettings(
        models=args.model, names=args.names.split(",") if args.names else None, tasks=tasks, lengths=parse_lengths(args.lengths), samples=args.samples, data=args.data or [],
        clip_tau=args.clip_tau, seed=args.seed, piece=args.piece, block=args.block, dtype=args.dtype, out=args.out,
        batch=args.batch, passages=args.passages, recall_pairs=args.recall_pairs,
    )
    report = evaluate(settings)
    print(f"report: {report}")
    return 0


def _add_run_command(sub, name: str, func, help: str, example: str) -> None:
    """A command that runs from a YAML config, with `--section.key value` overrides and `--resume`."""
    cmd = sub.add_parser(name, help=help, description=f"Options after CONFIG override the file: --section.key value, e.g. {example}")
    cmd.add_argument("config", help="the run's YAML file")
    cmd.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    cmd.set_defaults(func=func)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ittt", description="In-Place Test-Time Training")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded model and corpus: convert, train with and without TTT, evaluate, report",
        epilog="A flag left out keeps its default from inplace_ttt.demo.DemoSettings (150 steps of 2 x 1024 tokens, TTT on layer 3, chunk 64, target the token embeddings).",
    )
    demo.add_argument("--out", help="run directory (default: runs/demo-<date>-<time>)")
    demo.add_argument("--steps", type=int, help="training steps of each model")
    demo.add_argument("--row-length", type=int, help="tokens per training row")
    demo.add_argument("--batch-size", type=int, help="rows per step")
    demo.add_argument("--learning-rate", type=float, help="AdamW learning rate")
    demo.add_argument("--ttt-learning-rate", type=float, help="AdamW learning rate of the new TTT parameters")
    demo.add_argument("--layers", help="TTT layers: indices like 1,3 or a rule like 'every 2 from 1'")
    demo.add_argument("--chunk-size", type=int, help="TTT chunk size")
    demo.add_argument("--ttt-lr", type=float, help="the fast-weight learning rate")
    demo.add_argument("--target-init", choices=TARGET_INITS, help="how W_target starts")
    demo.add_argument("--lengths", help="evaluation lengths; the longest sets the held-out passages (that many tokens + 1)")
    demo.add_argument("--passages", type=int, help="held-out passages the losses are measured on")
    demo.add_argument("--samples", type=int, help="associative-recall samples per length")
    demo.add_argument("--seed", type=int)
    demo.set_defaults(func=_demo)
    doc = sub.add_parser("doctor", help="check the In-Place TTT invariants on a model and data")
    doc.add_argument("model_dir", help="a directory saved by a converted model's save_pretrained")
    doc.add_argument("--data", required=True, help=".txt or .jsonl (field 'text') to draw a batch from")
    doc.add_argument("--base", help="the unconverted model directory, for the warm-start check")
    doc.add_argument("--length", type=int, help="tokens per row (default 3 chunks)")
    doc.add_argument("--rows", type=int, default=2)
    doc.add_argument("--inference", action="store_true", help="the model is for inference: allow clipping and short data")
    doc.set_defaults(func=_doctor)
    ev = sub.add_parser("eval", help="long-context evaluation: RULER-style tasks, loss by position, report with plots")
    ev.add_argument("--model", action="append", required=True, help="a model directory (plain or In-Place TTT); repeat to compare")
    ev.add_argument("--tasks", default="all", help="comma-separated: loss, recall, niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe; or all")
    ev.add_argument("--lengths", default="1k,2k,4k", help="prompt lengths in tokens, e.g. 1k,2k,4k,8k")
    ev.add_argument("--samples", type=int, default=10, help="samples per task and length")
    ev.add_argument("--names", help="comma-separated names for the models in the report (default: their directory names)")
    ev.add_argument("--data", action="append", help="held-out documents (file or folder) for the loss task and as haystack text (default: the embedded corpus's held-out books)")
    ev.add_argument("--clip-tau", type=float, help="inference clipping for In-Place TTT models (the paper used 1e-5)")
    ev.add_argument("--out", default="eval-report", help="output directory")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--piece", type=int, default=2048, help="tokens per forward when reading long inputs")
    ev.add_argument("--block", type=int, default=256, help="final block of the sliding-window perplexity")
    ev.add_argument("--batch", type=int, default=8, help="rows per forward (samples of one task and length run together)")
    ev.add_argument("--passages", type=int, help="cut the held-out documents into up to this many passages of the longest length + 1 tokens")
    ev.add_argument("--recall-pairs", type=int, default=16, help="key-value pairs per associative-recall sample")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.set_defaults(func=_eval)
    _add_run_command(sub, "train", _train, "continual training with In-Place TTT (transformers Trainer)", "--train.learning_rate 1e-5")
    _add_run_command(
        sub, "pretrain", _pretrain,
        "train a small Llama model and its BPE tokenizer from scratch (how the embedded base model was made)", "--train.max_steps 100",
    )
    args, rest = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "pretrain")
    if not takes_overrides and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args, rest) if takes_overrides else args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"ittt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
