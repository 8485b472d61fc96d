"""Moshi from audio to audio on this machine: `moshi-encode` speed (seconds of audio per second),
`moshi-infer` real-time factor with and without In-Place TTT, and `moshi-infer` memory on 1 vs 5
minutes of input.

Parts: moshi's Mimi with random weights (`loaders.get_mimi`, the published size unless
``--small-mimi``; codebooks initialised by moshi's own k-means on espeak-ng speech), a small
random `LMModel` (dim 256, 12 temporal layers, Mimi's 2048 codes; TTT on layers 0 and 6, chunk
64, trained-looking targets), a tokenizer trained here, conversations spoken by espeak-ng.
Timings are medians of ``--repeats`` runs in this process, TTT and plain interleaved; memory is
the peak RSS of a fresh process per input length.

    python benchmarks/moshi_speech.py                      # CPU, 1 thread
    python benchmarks/moshi_speech.py --device cuda        # LMGen and Mimi in CUDA graphs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test helpers build the parts

import torch  # noqa: E402

LM = dict(dim=256, num_heads=4, num_layers=12, context=3000, text_card=64)


def build(root: Path, small_mimi: bool) -> dict:
    """Files of the parts (as a user would have them) in `root`."""
    import sentencepiece as spm
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    from inplace_ttt import TTTConfig
    from inplace_ttt.families.moshi import load_moshi, save_ttt
    from tests.speech.conftest import WORDS, mimi_config, random_mimi
    from tests.tiny_moshi import TINY, active_targets

    mimi = random_mimi(small=small_mimi)
    save_file({k: v.contiguous() for k, v in mimi.state_dict().items()}, str(root / "mimi.safetensors"))
    config = mimi_config() if small_mimi else None
    (root / "mimi.json").write_text(json.dumps(config))
    lm_kwargs = {**TINY, **LM, "card": mimi.cardinality, "depformer_dim": 128, "depformer_dim_feedforward": 256}
    (root / "lm.json").write_text(json.dumps(lm_kwargs))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in LMModel(**lm_kwargs, dtype=torch.float32).state_dict().items()}, str(root / "model.safetensors"))
    lm = load_moshi(
        root / "model.safetensors", lm_kwargs, config=TTTConfig(layers=[0, 6], chunk_size=64, target_source="token_embeddings"), dtype=torch.float32
    )
    active_targets(lm)
    save_ttt(lm, root / "ttt")
    import io

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 50), model_writer=model, vocab_size=64, pad_id=3, hard_vocab_limit=False, minloglevel=2
    )
    (root / "tokenizer.model").write_bytes(model.getvalue())
    return {
        "mimi": root / "mimi.safetensors",
        "mimi_config": config,
        "lm_kwargs": lm_kwargs,
        "tokenizer": root / "tokenizer.model",
        "weights": root / "model.safetensors",
        "ttt": root / "ttt",
    }


def conversation(root: Path, seconds: float, name: str, rate: int = 24000) -> Path:
    from tests.speech.conftest import dialogue, write_conversation

    main, user = dialogue(seconds, seed=0)
    path = root / f"{name}.wav"
    write_conversation(path, seconds, rate, main, user)
    return path


def encode_speed(parts: dict, root: Path, seconds: float, repeats: int, device: str) -> dict:
    from inplace_ttt.speech.encode import Conversation, Encoder, EncodeSettings

    audio = conversation(root, seconds, "encode", rate=22050)
    encoder = Encoder(EncodeSettings(root / "none.jsonl", parts["mimi"], parts["tokenizer"], root, parts["mimi_config"], parts["lm_kwargs"], device=device))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(Conversation("encode.wav", audio, seconds))
        times.append(time.perf_counter() - start)
    return {"seconds": seconds, "wall": statistics.median(times), "audio_per_second": seconds / statistics.median(times)}


def infer_runs(parts: dict, root: Path, seconds: float, repeats: int, device: str) -> dict:
    from inplace_ttt.speech.infer import InferSettings, run_inference

    audio = conversation(root, seconds, "infer")
    reports: dict[str, list] = {"plain": [], "ttt": []}
    for _ in range(repeats):
        for name in reports:
            ttt = parts["ttt"] / "ttt.safetensors" if name == "ttt" else None
            weights = parts["ttt"] / "model.safetensors" if name == "ttt" else parts["weights"]
            reports[name].append(
                run_inference(
                    InferSettings(
                        audio,
                        root / f"{name}.wav",
                        weights,
                        parts["mimi"],
                        ttt=ttt,
                        tokenizer=parts["tokenizer"],
                        lm_kwargs=parts["lm_kwargs"],
                        mimi_config=parts["mimi_config"],
                        channel="right",
                        device=device,
                        greedy=True,
                    ),
                    progress=False,
                )
            )
    return {
        name: {
            "rtf": statistics.median(r["real_time_factor"] for r in runs),
            "step_ms": statistics.median(r["step_ms"]["median"] for r in runs),
            "frame_ms": statistics.median(r["frame_ms"]["median"] for r in runs),
            "updates": runs[0]["updates"],
        }
        for name, runs in reports.items()
    }


def peak_rss_child(args: argparse.Namespace, parts: dict, audio: Path) -> dict:
    """`moshi-infer` on `audio` in a fresh process that only loads the parts and runs: its peak RSS."""
    job = json.dumps({"parts": {k: str(v) if isinstance(v, Path) else v for k, v in parts.items()}, "audio": str(audio), "device": args.device})
    out = subprocess.run([sys.executable, __file__, "--rss-child", job, "--threads", str(args.threads)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(job: str) -> None:
    from inplace_ttt.speech.infer import InferSettings, run_inference

    job = json.loads(job)
    parts, out = job["parts"], Path(job["audio"]).with_name("rss-out.wav")
    ttt = Path(parts["ttt"])
    report = run_inference(
        InferSettings(
            Path(job["audio"]),
            out,
            ttt / "model.safetensors",
            Path(parts["mimi"]),
            ttt=ttt / "ttt.safetensors",
            tokenizer=Path(parts["tokenizer"]),
            lm_kwargs=parts["lm_kwargs"],
            mimi_config=parts["mimi_config"],
            channel="right",
            device=job["device"],
            greedy=True,
        ),
        progress=False,
    )
    print(
        json.dumps(
            {"seconds": report["audio_seconds"], "peak_mib": _vm("VmHWM"), "rss_mib": _vm("VmRSS"), "frames": report["frames"], "updates": report["updates"]}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encode-seconds", type=float, default=60.0)
    parser.add_argument("--infer-seconds", type=float, default=20.0)
    parser.add_argument("--rss-seconds", type=float, nargs=2, default=[60.0, 300.0])
    parser.add_argument("--small-mimi", action="store_true", help="Mimi's architecture at a small width (the tests' one)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        return rss_child(args.rss_child)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, load {os.getloadavg()[0]:.1f}, "
        f"Mimi {'small' if args.small_mimi else 'published size'} (random weights)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "small").mkdir()
        parts = build(root, args.small_mimi)
        enc = encode_speed(parts, root, args.encode_seconds, args.repeats, args.device)
        print("\n| moshi-encode | stereo audio | wall s (median) | s of audio per s |\n|---|---|---|---|")
        print(f"| Mimi {'small' if args.small_mimi else 'full'} | {enc['seconds']:.0f} s | {enc['wall']:.2f} | {enc['audio_per_second']:.2f} |")
        runs = infer_runs(parts, root, args.infer_seconds, args.repeats, args.device)
        print(
            f"\n| moshi-infer, {args.infer_seconds:.0f} s input | real-time factor | LM step ms | frame ms (encode + step + decode) | updates per TTT layer |"
        )
        print("|---|---|---|---|---|")
        for name, r in runs.items():
            print(f"| {name} | {r['rtf']:.2f} | {r['step_ms']:.1f} | {r['frame_ms']:.1f} | {r['updates'] or '-'} |")
        print(
            f"\nTTT / plain: real-time factor x{runs['ttt']['rtf'] / runs['plain']['rtf']:.3f}, LM step x{runs['ttt']['step_ms'] / runs['plain']['step_ms']:.3f}"
        )
        print(f"load {os.getloadavg()[0]:.1f}")
        small = build(root / "small", small_mimi=True) if not args.small_mimi else parts
        rss = [peak_rss_child(args, small, conversation(root, s, f"long{s:g}")) for s in args.rss_seconds]
    print("\n| moshi-infer input (small Mimi, fresh process) | frames | peak RSS MiB | RSS at the end MiB | updates per TTT layer |\n|---|---|---|---|---|")
    for r in rss:
        print(f"| {r['seconds'] / 60:.1f} min | {r['frames']} | {r['peak_mib']:.1f} | {r['rss_mib']:.1f} | {r['updates']} |")
    print(
        f"peak RSS growth from {rss[0]['seconds'] / 60:.1f} to {rss[1]['seconds'] / 60:.1f} min of input: {rss[1]['peak_mib'] - rss[0]['peak_mib']:+.1f} MiB; "
        f"load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
