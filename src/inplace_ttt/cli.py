"""`ittt`: the command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

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
        for k in ("out", "steps", "row_length", "batch_size", "learning_rate", "ttt_params_learning_rate", "samples", "passages", "seed")
        if given(k)
    }
    if given("lengths"):
        kwargs["eval_lengths"] = parse_lengths(args.lengths)
    run_demo(DemoSettings(ttt=ttt, **kwargs))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """Load a converted model and a batch of its data, run `inplace_ttt.doctor`."""
    from pathlib import Path

    from .doctor import doctor
    from .families.moshi.io import TTT_WEIGHTS as MOSHI_TTT_WEIGHTS

    moshi = (Path(args.model_dir) / MOSHI_TTT_WEIGHTS).is_file()
    model, batch, base, what = (_moshi_doctor_inputs if moshi else _text_doctor_inputs)(args)
    model.train(not args.inference)
    report = doctor(model, batch, base, training=not args.inference)
    print(f"doctor: {args.model_dir} on {what} of {args.data}")
    print(report)
    return 0 if report.ok else 1


def _rows(length: int, steps: int, wanted: int, data: str) -> int:
    """Rows of `length` from `steps` of data: `wanted`, or as many as the data holds (said so)."""
    if length < 1 or wanted < 1:
        raise ValueError(f"--length and --rows must be >= 1; got {length} and {wanted}")
    rows = min(wanted, steps // length)
    if rows < 1:
        raise ValueError(f"--data {data} holds {steps} tokens (Moshi: steps), fewer than one row of --length {length}: give more data or a smaller --length")
    if rows < wanted:
        print(f"doctor: --data {data} holds {steps} tokens (Moshi: steps), enough for {rows} of the {wanted} rows of --rows", file=sys.stderr)
    return rows


def _text_doctor_inputs(args: argparse.Namespace):
    """A transformers checkpoint, rows of tokenized text from `--data`, the `--base` model."""
    from transformers import AutoTokenizer

    from .documents import read_documents
    from .families import ttt_layers
    from .families.hf import is_ttt_checkpoint, load_causal_lm, quiet_transformers

    if not Path(args.model_dir).is_dir():
        raise ValueError(f"{args.model_dir}: no such model folder")
    if not is_ttt_checkpoint(args.model_dir):
        raise ValueError(f"{args.model_dir} is not an In-Place TTT checkpoint (a converted model's save_pretrained folder, or a Moshi final/)")
    model = load_causal_lm(args.model_dir)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    length = 3 * max(layer.chunk_size for _, layer in ttt_layers(model)) if args.length is None else args.length
    text = "\n\n".join(read_documents([args.data], args.text_field))
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    rows = _rows(length, len(ids), args.rows, args.data)
    ids = ids[: rows * length].view(rows, -1)
    base = load_causal_lm(args.base, gguf_file=args.base_gguf_file) if args.base else None
    return model, ids, base, f"{rows} x {ids.shape[1]} tokens"


def _moshi_doctor_inputs(args: argparse.Namespace):
    """A Moshi `final/` (moshi's model.safetensors + ttt.safetensors), rows of one conversation's
    codes from `--data` (a .safetensors codes file), the `--base` model.safetensors."""
    from pathlib import Path

    import torch.nn.functional as F

    from .families.moshi import TTT_WEIGHTS, load_base, ttt_layers
    from .families.moshi.codes import read_conversation
    from .train.moshi import MoshiModelConfig, load_lm, read_lm_kwargs

    d = Path(args.model_dir)
    files = MoshiModelConfig(weights=str(d / "model.safetensors"), ttt_weights=str(d / TTT_WEIGHTS), lm_kwargs=args.lm_kwargs)
    lm = load_lm(files, None)
    length = 3 * max(layer.chunk_size for _, layer in ttt_layers(lm)) if args.length is None else args.length
    codes = read_conversation(Path(args.data), lm.num_codebooks, lm.text_card, lm.card)
    rows = _rows(length, codes.shape[1], args.rows, args.data)
    codes = F.pad(codes, (0, max(0, rows * length - codes.shape[1])), value=-1)[:, : rows * length]
    batch = codes.unflatten(1, (rows, length)).transpose(0, 1)
    base = load_base(args.base, read_lm_kwargs(args.lm_kwargs)) if args.base else None
    return lm, {"codes": batch}, base, f"{rows} x {length} steps"


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .train.run import load_run_config, train

    final = train(load_run_config(args.config, overrides), resume=args.resume, allow_changes=args.allow_changes)
    print(f"final model: {final}")
    return 0


def _pretrain(args: argparse.Namespace, overrides: list[str]) -> int:
    from .train.config import load_config
    from .train.pretrain import PretrainConfig, pretrain

    final = pretrain(load_config(args.config, overrides, schema=PretrainConfig), resume=args.resume, allow_changes=args.allow_changes)
    print(f"final model: {final}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .eval.runner import ALL_TASKS, EvalSettings, evaluate, parse_lengths

    tasks = list(ALL_TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    settings = EvalSettings(
        models=args.model,
        names=args.names.split(",") if args.names else None,
        tasks=tasks,
        lengths=parse_lengths(args.lengths),
        samples=args.samples,
        data=args.data or [],
        clip_tau=args.clip_tau,
        seed=args.seed,
        tokens_per_forward=args.tokens_per_forward,
        final_block=args.final_block,
        dtype=args.dtype,
        out=args.out,
        chat_template=args.chat_template,
        batch=args.batch,
        passages=args.passages,
        recall_pairs=args.recall_pairs,
    )
    report = evaluate(settings)
    print(f"report: {report}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """A saved model (ours or a release checkpoint) written in the authors' release format, with its tokenizer."""
    from transformers import AutoTokenizer

    from .families.hf import export_release, from_pretrained, quiet_transformers

    model = from_pretrained(args.model_dir, dtype="auto")  # written in the dtype it was saved in
    try:
        with quiet_transformers():  # an In-Place TTT config.json's model_type is unknown to AutoConfig, by design
            tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (OSError, ValueError):
        tokenizer = None
        print(f"ittt export: {args.model_dir} has no tokenizer; their RULER pipeline needs one beside the weights", file=sys.stderr)
    print(f"release checkpoint: {export_release(model, args.out, tokenizer=tokenizer)}")
    return 0


def _moshi_env(device: str) -> None:
    """On a CPU, moshi's lazy torch.compile only costs time: turn it off (before moshi is imported)."""
    import os

    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("NO_TORCH_COMPILE", "1")


def _moshi_encode(args: argparse.Namespace) -> int:
    _moshi_env(args.device)
    from .speech.encode import EncodeSettings, encode_manifest
    from .speech.loading import read_json, resolve_device

    settings = EncodeSettings(
        args.manifest,
        args.mimi,
        args.tokenizer,
        args.out,
        mimi_config=read_json(args.mimi_config, "--mimi-config"),
        lm_kwargs=read_json(args.lm_config, "--lm-config"),
        main_speaker=args.main_speaker,
        device=str(resolve_device(args.device, "float32")[0]),
    )
    summary = encode_manifest(settings)
    rate = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds else 0.0
    print(
        f"moshi-encode: {len(summary.encoded)} encoded ({summary.audio_seconds:.1f} s of audio, {rate:.1f} s of audio per second), "
        f"{len(summary.skipped)} already done, {len(summary.failed)} failed; codes in {args.out}"
    )
    for _path, why in summary.failed:
        print(f"ittt moshi-encode: error: {why}", file=sys.stderr)
    return 2 if summary.failed else 0


def _moshi_infer(args: argparse.Namespace) -> int:
    _moshi_env(args.device)
    from .speech.infer import InferSettings, run_inference
    from .speech.loading import read_json

    report = run_inference(
        InferSettings(
            args.input,
            args.output,
            args.weights,
            args.mimi,
            ttt=args.ttt,
            tokenizer=args.tokenizer,
            lm_kwargs=read_json(args.lm_config, "--lm-config"),
            mimi_config=read_json(args.mimi_config, "--mimi-config"),
            channel=args.channel,
            clip_tau=args.clip_tau,
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
            greedy=args.greedy,
            temp=args.temp,
            temp_text=args.temp_text,
        )
    )
    step = report["step_ms"]
    print(
        f"moshi-infer: {report['audio_seconds']:.1f} s of audio in {report['wall_seconds']:.1f} s (real-time factor {report['real_time_factor']:.2f}); "
        f"LM step {step['median']:.1f} ms median, {step['p90']:.1f} ms p90, {step['max']:.1f} ms max over {report['steps']} steps; "
        f"fast-weight updates per TTT layer {report['updates'] or 'none (no TTT)'}"
    )
    print(f"audio: {report['output']}  text: {report['transcript']}  report: {Path(report['output']).with_suffix('.json')}")
    return 0


def _moshi_eval(args: argparse.Namespace) -> int:
    _moshi_env(args.device)
    from .eval.moshi import MoshiEvalSettings, evaluate_moshi
    from .speech.loading import read_json

    settings = MoshiEvalSettings(
        models=args.model,
        data=args.data,
        out=Path(args.out),
        lm_kwargs=read_json(args.lm_config, "--lm-config"),
        steps_per_forward=args.steps_per_forward,
        bucket_minutes=args.bucket_minutes,
        device=args.device,
        dtype=args.dtype,
        mimi=args.mimi,
        mimi_config=read_json(args.mimi_config, "--mimi-config"),
        tokenizer=args.tokenizer,
    )
    print(f"report: {evaluate_moshi(settings)}")
    return 0


def _add_moshi_commands(sub) -> None:
    lm_config = "JSON file of the LMModel's keyword arguments (default: Moshi 7B's, as moshi's loaders)"
    mimi_config = "JSON file of Mimi's settings (default: the published Mimi's, as moshi's loaders)"
    enc = sub.add_parser("moshi-encode", help="moshi-finetune's conversations (manifest, stereo audio, word alignments) to the codes files ittt train reads")
    enc.add_argument("manifest", type=Path, help='JSONL of {"path": "a.wav", "duration": 24.5}, paths relative to it; a.json alignments beside each file')
    enc.add_argument("--mimi", type=Path, required=True, help="Mimi's weights (.safetensors)")
    enc.add_argument("--tokenizer", type=Path, required=True, help="Moshi's text tokenizer (sentencepiece .model)")
    enc.add_argument("--out", type=Path, required=True, help="folder for the codes files (one .safetensors per conversation, the manifest's layout)")
    enc.add_argument("--mimi-config", help=mimi_config)
    enc.add_argument("--lm-config", help=lm_config)
    enc.add_argument("--main-speaker", default="SPEAKER_MAIN", help="speaker label of Moshi's words in the alignments")
    enc.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    enc.set_defaults(func=_moshi_encode)
    inf = sub.add_parser("moshi-infer", help="stream a user's recording through a Moshi model (In-Place TTT on); write Moshi's audio and text")
    inf.add_argument("input", type=Path, help="the user's audio (mono, or stereo with --channel); any sample rate")
    inf.add_argument("output", type=Path, help="Moshi's audio (.wav, 24 kHz); its text goes beside it as .txt, the run's report as .json")
    inf.add_argument("--weights", type=Path, required=True, help="moshi's model.safetensors (published, or final/ of ittt train)")
    inf.add_argument("--ttt", type=Path, help="ttt.safetensors beside it (omit: the model without TTT)")
    inf.add_argument("--mimi", type=Path, required=True, help="Mimi's weights (.safetensors)")
    inf.add_argument("--tokenizer", type=Path, help="Moshi's text tokenizer (omit: the transcript holds token ids)")
    inf.add_argument("--lm-config", help=lm_config)
    inf.add_argument("--mimi-config", help=mimi_config)
    inf.add_argument("--channel", choices=["left", "right"], help="the user's channel of a stereo input")
    inf.add_argument("--clip-tau", type=float, help="inference clipping of the fast-weight updates (default: the saved setting)")
    inf.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    inf.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="the LM's dtype (auto: bfloat16 on cuda, else float32)"
    )
    inf.add_argument("--seed", type=int, default=0, help="sampling seed")
    inf.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    inf.add_argument("--temp", type=float, default=0.8, help="audio sampling temperature (LMGen's default)")
    inf.add_argument("--temp-text", type=float, default=0.7, help="text sampling temperature (LMGen's default)")
    inf.set_defaults(func=_moshi_infer)
    ev = sub.add_parser("moshi-eval", help="Moshi text and audio loss by minute of long held-out conversations, several models in one report")
    ev.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=PATH[,ttt=FILE][,clip_tau=X][,yarn=F]: PATH a model.safetensors or a folder with it (and ttt.safetensors); repeat to compare",
    )
    ev.add_argument(
        "--data",
        action="append",
        required=True,
        help="codes files (.safetensors), folders of them, or a moshi-finetune manifest (.jsonl, needs --mimi and --tokenizer); repeatable",
    )
    ev.add_argument("--lm-config", help=lm_config)
    ev.add_argument("--mimi", type=Path, help="Mimi's weights, to encode a manifest")
    ev.add_argument("--mimi-config", help=mimi_config)
    ev.add_argument("--tokenizer", type=Path, help="Moshi's text tokenizer, to encode a manifest")
    ev.add_argument(
        "--steps-per-forward", "--piece", type=int, default=250, help="steps per forward (memory; the losses do not depend on it); --piece: its old name"
    )
    ev.add_argument("--bucket-minutes", type=float, default=1.0, help="width of the time buckets")
    ev.add_argument("--out", default="moshi-eval", help="output directory")
    ev.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ev.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ev.set_defaults(func=_moshi_eval)


def _add_run_command(sub, name: str, func, help: str, example: str) -> None:
    """A command that runs from a YAML config, with `--section.key value` overrides and `--resume`."""
    cmd = sub.add_parser(name, help=help, description=f"Options after CONFIG override the file: --section.key value, e.g. {example}")
    cmd.add_argument("config", help="the run's YAML file")
    cmd.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    cmd.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: go on with settings that differ from the run's config.yaml (kept as config-until-step-<N>.yaml)",
    )
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
    demo.add_argument(
        "--ttt-params-learning-rate",
        "--ttt-learning-rate",
        type=float,
        help="AdamW learning rate of the new TTT parameters (--ttt-learning-rate: its old name)",
    )
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
    doc.add_argument("model_dir", help="a converted model's directory: transformers' save_pretrained, or a Moshi final/ (model.safetensors + ttt.safetensors)")
    doc.add_argument("--data", required=True, help="documents to draw a batch from (.txt, .jsonl or .parquet); for Moshi a .safetensors conversation of codes")
    doc.add_argument("--base", help="the unconverted model (a directory; for Moshi its model.safetensors), for the warm-start and activation checks")
    doc.add_argument("--base-gguf-file", help="the base model is this GGUF file in --base (read dequantized, as ittt train --gguf-file does)")
    doc.add_argument("--lm-kwargs", help="Moshi: a JSON file of LMModel keyword arguments (default: Moshi 7B's)")
    doc.add_argument("--length", type=int, help="tokens (Moshi: steps) per row (default 3 chunks)")
    doc.add_argument("--rows", type=int, default=2)
    doc.add_argument("--text-field", default="text", help="the field of a .jsonl / .parquet row that holds its text")
    doc.add_argument("--inference", action="store_true", help="the model is for inference: allow clipping and short data")
    doc.set_defaults(func=_doctor)
    ev = sub.add_parser("eval", help="long-context evaluation: RULER-style tasks, loss by position, report with plots")
    ev.add_argument("--model", action="append", required=True, help="a model directory (plain or In-Place TTT); repeat to compare")
    ev.add_argument(
        "--tasks", default="all", help="comma-separated: loss, recall, niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe, fwe; or all"
    )
    ev.add_argument("--lengths", default="1k,2k,4k", help="prompt lengths in tokens, e.g. 1k,2k,4k,8k")
    ev.add_argument("--samples", type=int, default=10, help="samples per task and length")
    ev.add_argument("--names", help="comma-separated names for the models in the report (default: their directory names)")
    ev.add_argument(
        "--data",
        action="append",
        help="held-out documents (file or folder) for the loss task and as haystack text (default: the embedded corpus's held-out books)",
    )
    ev.add_argument("--clip-tau", type=float, help="inference clipping for In-Place TTT models (the paper used 1e-5)")
    ev.add_argument("--out", default="eval-report", help="output directory")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--tokens-per-forward", "--piece", type=int, default=2048, help="tokens per forward when reading long inputs (--piece: its old name)")
    ev.add_argument(
        "--final-block", "--block", type=int, default=256, help="tokens scored at the end of each document in the sliding-window view (--block: its old name)"
    )
    ev.add_argument("--batch", type=int, default=8, help="rows per forward (samples of one task and length run together)")
    ev.add_argument("--passages", type=int, help="cut the held-out documents into up to this many passages of the longest length + 1 tokens")
    ev.add_argument("--recall-pairs", type=int, default=16, help="key-value pairs per associative-recall sample")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument(
        "--chat-template",
        action="store_true",
        help="instruct models: each task prompt is a user turn of the tokenizer's chat template, the answer starts the assistant's turn",
    )
    ev.set_defaults(func=_eval)
    ex = sub.add_parser("export", help="write a saved In-Place TTT model in another format: the authors' release (their config keys and weight names)")
    ex.add_argument("model_dir", help="a directory saved by a converted model's save_pretrained")
    ex.add_argument("out", help="the new directory to write (must not hold files)")
    ex.add_argument("--format", required=True, choices=["release"], help="release: ByteDance-Seed/In-Place-TTT's Qwen3 / Llama checkpoints")
    ex.set_defaults(func=_export)
    _add_run_command(sub, "train", _train, "continual training with In-Place TTT (transformers Trainer)", "--train.learning_rate 1e-5")
    _add_run_command(
        sub,
        "pretrain",
        _pretrain,
        "train a small Llama model and its BPE tokenizer from scratch (how the embedded base model was made)",
        "--train.max_steps 100",
    )
    _add_moshi_commands(sub)
    args, rest = parser.parse_known_args(argv)
    takes_overrides = args.command in ("train", "pretrain")
    if not takes_overrides and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .train.run_dir import RunFinished

    try:
        if getattr(args, "allow_changes", False) and not args.resume:
            raise ValueError("--allow-changes goes with --resume")
        return args.func(args, rest) if takes_overrides else args.func(args)
    except RunFinished as e:  # resuming a finished run: nothing to do, and that is no error
        print(f"ittt {args.command}: {e}")
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"ittt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
