"""`ittt moshi-serve`: moshi's server (websocket, Opus, its web UI) on a Moshi model with In-Place TTT (`inplace_ttt.speech.serve`)."""

from __future__ import annotations

import argparse
import logging

from .flags import add_generation, add_moshi_model, moshi_player, prepare_moshi, user_path


def add(sub) -> None:
    srv = sub.add_parser("moshi-serve", help="talk to a Moshi model (In-Place TTT on) through moshi's own server: websocket /api/chat, Opus audio, its web UI")
    add_moshi_model(srv, "Moshi's text tokenizer (sentencepiece .model): the text sent to the client", tokenizer_required=True)
    srv.add_argument("--host", default="localhost", help="address to listen on (moshi's default: localhost)")
    srv.add_argument("--port", type=int, default=8998, help="port (moshi's default: 8998)")
    srv.add_argument("--static", type=user_path, help="moshi's web UI: the dist/ folder of kyutai/moshi-artifacts' dist.tgz (omit: the websocket only)")
    add_generation(srv, 42424242, "sampling seed (moshi's server's default)")
    srv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi(args.device)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535]; got {args.port}")
    import torch
    from aiohttp import web

    from ..speech.serve import ServeSettings, build_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    app, _ = build_app(ServeSettings(static=args.static, **moshi_player(args)))
    print(
        f"moshi-serve: {'web UI at' if args.static else 'websocket at'} http://{args.host}:{args.port}{'' if args.static else '/api/chat'} (Ctrl-C to stop)",
        flush=True,
    )
    with torch.no_grad():
        web.run_app(app, host=args.host, port=args.port, print=None)
    return 0
