"""`ittt moshi-serve` round trip per 80 ms frame, with and without In-Place TTT.

A client on 127.0.0.1 holds moshi's protocol (websocket /api/chat, Opus through sphn) in lockstep:
it sends one frame of the user's audio and waits for the frame of Moshi's audio that step
answers; the round trip is the time between the two (the server's Mimi encode, LM step, Mimi
decode and Opus both ways, plus the client's Opus). Server and client share this process and its
event loop. Parts: `ittt moshi-kit`'s (Mimi at a small width, k-means-started codebooks; its
tokenizer; its babble as the user's audio) and two random LMModels: the kit's tiny one, and one
Moshi-shaped (Moshi 7B's layer counts, context and stream layout, narrower). TTT: on every 6th
layer, chunk 64, trained-looking targets. Conversations are fresh connections, plain and TTT
interleaved; latencies are pooled over ``--repeats`` conversations per model.

    python benchmarks/moshi_serve.py                       # CPU, 1 thread
    python benchmarks/moshi_serve.py --device cuda         # moshi's warm-up: CUDA graphs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test helpers give trained-looking targets

import numpy as np  # noqa: E402
import torch  # noqa: E402

FRAME = 1920
# Moshi 7B: 32 temporal layers of 4096, 32 heads, context 3000; depformer 6 layers of 1024, 16 heads
MOSHI_SHAPED = dict(
    dim=512, num_heads=8, num_layers=32, context=3000, depformer_dim=256, depformer_num_heads=4, depformer_num_layers=6, depformer_dim_feedforward=1024
)


MODELS = {"kit": "kit's (dim 32, 3 layers)", "moshi-shaped": "Moshi-shaped (dim 512, 32 layers)"}


def models(root: Path, chosen: list[str]) -> dict[str, dict]:
    """Per model: its LMModel settings and the folder of its converted, saved TTT version."""
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    from inplace_ttt import TTTConfig
    from inplace_ttt.families.moshi import load_moshi, save_ttt
    from inplace_ttt.speech.kit import LM_KWARGS
    from tests.tiny_moshi import active_targets

    out = {}
    for key in chosen:
        name, kwargs = MODELS[key], LM_KWARGS if key == "kit" else {**LM_KWARGS, **MOSHI_SHAPED}
        folder = root / f"lm-{key}"
        folder.mkdir()
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in LMModel(**kwargs, dtype=torch.float32).state_dict().items()}, str(folder / "model.safetensors"))
        lm = load_moshi(
            folder / "model.safetensors", kwargs, config=TTTConfig(layers="every 6", chunk_size=64, target_source="token_embeddings"), dtype=torch.float32
        )
        active_targets(lm)
        save_ttt(lm, folder / "ttt")
        out[name] = {"lm_kwargs": kwargs, "weights": folder / "model.safetensors", "ttt": folder / "ttt" / "ttt.safetensors"}
    return out


async def lockstep(url: str, pcm: np.ndarray, skip: int) -> list[float]:
    """One conversation; the round trip of every frame after the first `skip` (LMGen answers those late)."""
    import aiohttp
    import sphn

    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    trips = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert await ws.receive_bytes() == b"\x00"
        for i in range(0, len(pcm) // FRAME * FRAME, FRAME):
            sent = time.perf_counter()
            await ws.send_bytes(b"\x01" + writer.append_pcm(pcm[i : i + FRAME]))
            if i // FRAME < skip:
                continue
            while True:
                message = await ws.receive_bytes()
                if message[0] == 1:
                    reader.append_bytes(message[1:])
                    break
            trips.append(time.perf_counter() - sent)
    return trips


async def run(apps: dict, pcm: np.ndarray, skip: int, repeats: int) -> dict[str, list[list[float]]]:
    """Per variant, the round trips of each of its `repeats` conversations (variants interleaved)."""
    from aiohttp import web

    runners, urls = [], {}
    for key, (app, _) in apps.items():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        urls[key] = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/api/chat"
    trips: dict[str, list[list[float]]] = {key: [] for key in apps}
    try:
        for _ in range(repeats):
            for key, url in urls.items():  # interleaved: the machine's load falls on both alike
                trips[key].append(await lockstep(url, pcm, skip))
    finally:
        for runner in runners:
            await runner.cleanup()
    return trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="the user's audio per conversation")
    parser.add_argument("--repeats", type=int, default=3, help="conversations per model and variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: moshi's warm-up captures LMGen and Mimi in CUDA graphs")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="which LMModels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import soundfile as sf

    from inplace_ttt.eval.intervals import mean_interval
    from inplace_ttt.speech.kit import write_kit
    from inplace_ttt.speech.serve import ServeSettings, build_app

    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.device}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kit = write_kit(root / "kit", conversations=(), user_seconds=args.seconds)
        pcm = sf.read(str(kit["user"]), dtype="float32")[0]
        mimi_config = json.loads(kit["mimi_config"].read_text())
        rows, ratios = [], {}
        for name, model in models(root, args.models).items():
            apps = {
                variant: build_app(
                    ServeSettings(
                        model["weights"], kit["mimi"], kit["tokenizer"], ttt=ttt, lm_kwargs=model["lm_kwargs"], mimi_config=mimi_config, device=args.device
                    )
                )
                for variant, ttt in (("plain", None), ("TTT", model["ttt"]))
            }
            trips = asyncio.run(run(apps, pcm, max(model["lm_kwargs"]["delays"]), args.repeats))
            updates = apps["TTT"][1].connections[-1].updates
            for variant, conversations in trips.items():
                ms = sorted(1000 * s for c in conversations for s in c)
                rows.append((name, variant, len(ms), statistics.median(ms), ms[round(0.95 * (len(ms) - 1))], updates if variant == "TTT" else "-"))
            # paired by round (a plain conversation, then a TTT one): the ratio of their medians
            ratios[name] = [statistics.median(t) / statistics.median(p) for p, t in zip(trips["plain"], trips["TTT"])]
            print(f"load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| model | variant | frames | round trip median ms | p95 ms | fast-weight updates per TTT layer (one conversation) |")
    print("|---|---|---|---|---|---|")
    for name, variant, n, median, p95, updates in rows:
        print(f"| {name} | {variant} | {n} | {median:.1f} | {p95:.1f} | {updates} |")
    for name, paired in ratios.items():
        plain, ttt = (r for r in rows if r[0] == name)
        interval = mean_interval(paired)
        print(
            f"{name}: TTT / plain, pooled median x{ttt[3] / plain[3]:.3f}, p95 x{ttt[4] / plain[4]:.3f}; "
            f"per round (median / median) mean x{statistics.fmean(paired):.3f}, 95% interval {interval and [round(x, 3) for x in interval]} over {len(paired)} rounds"
        )


if __name__ == "__main__":
    main()
