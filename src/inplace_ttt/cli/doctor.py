"""`ittt doctor`: the In-Place TTT invariants on a saved model and its data (`inplace_ttt.doctor.check_saved`)."""

from __future__ import annotations

import argparse

from .flags import add_lm_kwargs, expanded


def add(sub) -> None:
    doc = sub.add_parser("doctor", help="check the In-Place TTT invariants on a model and data")
    doc.add_argument(
        "model_dir", type=expanded, help="a converted model's directory: transformers' save_pretrained, or a Moshi final/ (model.safetensors + ttt.safetensors)"
    )
    doc.add_argument(
        "--data", type=expanded, required=True, help="documents to draw a batch from (.txt, .jsonl or .parquet); for Moshi a .safetensors conversation of codes"
    )
    doc.add_argument(
        "--base", type=expanded, help="the unconverted model (a directory; for Moshi its model.safetensors), for the warm-start and activation checks"
    )
    doc.add_argument("--base-gguf-file", help="the base model is this GGUF file in --base (read dequantized, as ittt train --gguf-file does)")
    add_lm_kwargs(doc, "Moshi: a JSON file of LMModel keyword arguments (default: Moshi 7B's); --lm-config: its old name")
    doc.add_argument("--length", type=int, help="tokens (Moshi: steps) per row (default 3 chunks)")
    doc.add_argument("--rows", type=int, default=2)
    doc.add_argument("--text-field", default="text", help="the field of a .jsonl / .parquet row that holds its text")
    doc.add_argument("--inference", action="store_true", help="the model is for inference: allow clipping and short data")
    doc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..doctor import check_saved
    from ..families import SavedFiles

    files = SavedFiles(
        model_dir=args.model_dir, data=args.data, base=args.base, base_gguf_file=args.base_gguf_file, lm_kwargs=args.lm_kwargs, text_field=args.text_field
    )
    report, batch = check_saved(files, length=args.length, rows=args.rows, inference=args.inference)
    print(f"doctor: {args.model_dir} on {batch} of {args.data}")
    print(report)
    return 0 if report.ok else 1
