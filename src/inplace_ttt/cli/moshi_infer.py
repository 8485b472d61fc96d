"""`ittt moshi-infer`: stream a recording through a Moshi model (`inplace_ttt.speech.infer.run_inference`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_generation, add_moshi_model, moshi_player, prepare_moshi, user_path


def add(sub) -> None:
    inf = sub.add_parser("moshi-infer", help="stream a user's recording through a Moshi model (In-Place TTT on); write Moshi's audio and text")
    inf.add_argument("input", type=user_path, help="the user's audio (mono, or stereo with --channel); any sample rate")
    inf.add_argument("output", type=user_path, help="Moshi's audio (.wav, 24 kHz); its text goes beside it as .txt, the run's report as .json")
    add_moshi_model(inf, "Moshi's text tokenizer (omit: the transcript holds token ids)")
    inf.add_argument("--channel", choices=["left", "right"], help="the user's channel of a stereo input")
    add_generation(inf, 0, "sampling seed")
    inf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi(args.device)
    from ..speech.infer import InferSettings, run_inference

    report = run_inference(InferSettings(args.input, args.output, channel=args.channel, **moshi_player(args)))
    step = report["step_ms"]
    print(
        f"moshi-infer: {report['audio_seconds']:.1f} s of audio in {report['wall_seconds']:.1f} s (real-time factor {report['real_time_factor']:.2f}); "
        f"LM step {step['median']:.1f} ms median, {step['p90']:.1f} ms p90, {step['max']:.1f} ms max over {report['steps']} steps; "
        f"fast-weight updates per TTT layer {report['updates'] or 'none (no TTT)'}"
    )
    print(f"audio: {report['output']}  text: {report['transcript']}  report: {Path(report['output']).with_suffix('.json')}")
    return 0
