"""`ittt moshi-encode`: moshi-finetune's conversations to codes files (`inplace_ttt.speech.encode.encode_manifest`)."""

from __future__ import annotations

import argparse
import sys

from .flags import add_device, add_lm_kwargs, add_mimi_config, prepare_moshi, user_path


def add(sub) -> None:
    enc = sub.add_parser("moshi-encode", help="moshi-finetune's conversations (manifest, stereo audio, word alignments) to the codes files ittt train reads")
    enc.add_argument("manifest", type=user_path, help='JSONL of {"path": "a.wav", "duration": 24.5}, paths relative to it; a.json alignments beside each file')
    enc.add_argument("--mimi", type=user_path, required=True, help="Mimi's weights (.safetensors)")
    enc.add_argument("--tokenizer", type=user_path, required=True, help="Moshi's text tokenizer (sentencepiece .model)")
    enc.add_argument("--out", type=user_path, required=True, help="folder for the codes files (one .safetensors per conversation, the manifest's layout)")
    add_mimi_config(enc)
    add_lm_kwargs(enc)
    enc.add_argument("--main-speaker", default="SPEAKER_MAIN", help="speaker label of Moshi's words in the alignments")
    add_device(enc)
    enc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi(args.device)
    from ..speech.encode import EncodeSettings, encode_manifest
    from ..speech.loading import read_json, resolve_device

    settings = EncodeSettings(
        args.manifest,
        args.mimi,
        args.tokenizer,
        args.out,
        mimi_config=read_json(args.mimi_config, "--mimi-config"),
        lm_kwargs=read_json(args.lm_kwargs, "--lm-kwargs"),
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
