"""`ittt moshi-infer`: stream a recording through a Moshi model (`inplace_ttt.speech.infer.run_inference`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_device, add_lm_kwargs, add_mimi_config, prepare_moshi, temperature, user_path


def add(sub) -> None:
    inf = sub.add_parser("moshi-infer", help="stream a user's recording through a Moshi model (In-Place TTT on); write Moshi's audio and text")
    inf.add_argument("input", type=user_path, help="the user's audio (mono, or stereo with --channel); any sample rate")
    inf.add_argument("output", type=user_path, help="Moshi's audio (.wav, 24 kHz); its text goes beside it as .txt, the run's report as .json")
    inf.add_argument("--weights", type=user_path, required=True, help="moshi's model.safetensors (published, or final/ of ittt train)")
    inf.add_argument("--ttt", type=user_path, help="ttt.safetensors beside it (omit: the model without TTT)")
    inf.add_argument("--mimi", type=user_path, required=True, help="Mimi's weights (.safetensors)")
    inf.add_argument("--tokenizer", type=user_path, help="Moshi's text tokenizer (omit: the transcript holds token ids)")
    add_lm_kwargs(inf)
    add_mimi_config(inf)
    inf.add_argument("--channel", choices=["left", "right"], help="the user's channel of a stereo input")
    inf.add_argument("--clip-tau", type=float, help="inference clipping of the fast-weight updates (default: the saved setting)")
    add_device(inf)
    inf.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="the LM's dtype (auto: bfloat16 on cuda, else float32)"
    )
    inf.add_argument("--seed", type=int, default=0, help="sampling seed")
    inf.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    inf.add_argument("--temp", type=temperature, default=0.8, help="audio sampling temperature (LMGen's default)")
    inf.add_argument("--temp-text", type=temperature, default=0.7, help="text sampling temperature (LMGen's default)")
    inf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi(args.device)
    from ..speech.infer import InferSettings, run_inference
    from ..speech.loading import read_json

    report = run_inference(
        InferSettings(
            args.input,
            args.output,
            args.weights,
            args.mimi,
            ttt=args.ttt,
            tokenizer=args.tokenizer,
            lm_kwargs=read_json(args.lm_kwargs, "--lm-kwargs"),
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
