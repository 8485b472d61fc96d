"""`ittt moshi-serve`: moshi's own server (`moshi.server`) with an In-Place TTT model.

Everything on the wire is moshi's: the websocket ``/api/chat``, the handshake byte ``0x00``, the
user's audio as Opus pages behind ``0x01``, Moshi's audio behind ``0x01`` and its text pieces
behind ``0x02``, Opus through `sphn`, one conversation at a time (moshi's lock), and its web UI
from a ``--static`` folder. The handlers are moshi's `ServerState`'s; this module only hands it
our model and counts, per connection, what the fast weights did.

Each connection starts from the loaded weights: moshi's `handle_chat` calls
``lm_gen.reset_streaming()``, which resets the TTT layers' streaming state (their fast weights go
back to the pretrained ``W_down``); then the fast weights take one update per chunk of steps of
that conversation, as in `ittt moshi-infer`.

moshi 0.2.13's ``moshi/server.py`` calls its ``main()`` at import (no ``__name__`` guard: importing
it parses our command line and downloads Kyutai's model), so `moshi_server` compiles that module's
source without that one final statement. It checks that the statement is exactly that call and
imports the module as it is when a later moshi guards it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from .loading import load_player

log = logging.getLogger(__name__)


def _calls_main(statement: ast.stmt) -> bool:
    """Whether a module-level statement is moshi's ``with torch.no_grad(): main()`` (or a bare ``main()``)."""
    body = statement.body if isinstance(statement, ast.With) else [statement]
    return (
        len(body) == 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Call)
        and isinstance(body[0].value.func, ast.Name)
        and body[0].value.func.id == "main"
    )


@functools.cache
def moshi_server() -> types.ModuleType:
    """moshi's ``moshi.server`` module (its `ServerState`, handlers, `seed_all`), without running its ``main()``."""
    name = "moshi.server"
    if name in sys.modules:
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.loader is None:
        raise ValueError("moshi-serve needs moshi and its server's packages (scripts/setup.sh --moshi)")
    tree = ast.parse(spec.loader.get_source(name), spec.origin)
    kept = [s for s in tree.body if not _calls_main(s)]
    if len(kept) == len(tree.body):  # a moshi whose server guards its main(): an ordinary import
        return importlib.import_module(name)
    tree.body = kept
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: its dataclasses look their module up
    try:
        exec(compile(tree, spec.origin, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@dataclass
class Connection:
    """What one conversation did: LMGen steps, and per TTT layer the fast-weight updates it folded
    in, and the Frobenius norm of their sum (the fast weight is ``W_down`` plus ``ttt_lr`` times
    it) at its start (0: the pretrained weights) and at its end."""

    steps: int
    updates: dict[int, int]
    norm_at_start: dict[int, float]
    norm: dict[int, float]


class _Pieces:
    """The tokenizer as moshi's server reads it (`id_to_piece`), an id past its vocabulary as
    ``<id>`` (sentencepiece raises on it; a model's text vocabulary may be the larger)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def id_to_piece(self, token: int) -> str:
        return self.tokenizer.id_to_piece(token) if token < self.tokenizer.vocab_size() else f"<{token}>"


def _fast_weights(lm) -> tuple[dict[int, int], dict[int, float]]:
    """Per TTT layer of a streaming LMModel (its one row): the updates folded in, the norm of their sum."""
    from ..families.moshi import ttt_layers

    states = {i: layer._streaming_state.steps for i, layer in ttt_layers(lm)}
    return {i: int(s.updates[0]) for i, s in states.items()}, {i: float(s.fast_sum[0].norm()) for i, s in states.items()}


@functools.cache
def _state_class() -> type:
    """moshi's `ServerState` that keeps a `Connection` record per conversation (its handlers as they are)."""
    server = moshi_server()

    class TTTServerState(server.ServerState):
        connections: list[Connection]

        def warmup(self) -> None:
            # moshi's warm-up is for CUDA graph capture and ends in torch.cuda.synchronize(); a CPU has neither
            if torch.device(self.device).type == "cuda":
                with torch.no_grad():
                    super().warmup()

        async def recv_loop(self, ws, opus_reader, opus_writer) -> None:
            lm = self.lm_gen.lm_model
            start = _fast_weights(lm)  # handle_chat has just reset the streaming state
            try:
                with torch.no_grad():  # moshi runs its whole server under no_grad (Mimi's encode and decode would record graphs)
                    await super().recv_loop(ws, opus_reader, opus_writer)
            finally:
                (before, norm_at_start), (after, norm) = start, _fast_weights(lm)
                updates = {i: after[i] - before[i] for i in after}  # the layers count updates since streaming began, across resets
                record = Connection(self.lm_gen._streaming_state.offset_cpu, updates, norm_at_start, norm)
                self.connections.append(record)
                log.info(
                    "conversation %d: %d steps, fast-weight updates per TTT layer %s", len(self.connections), record.steps, record.updates or "none (no TTT)"
                )

    return TTTServerState


@dataclass
class ServeSettings:
    weights: Path
    mimi: Path
    tokenizer: Path
    ttt: Path | None = None  # None: the plain model (the baseline)
    lm_kwargs: dict | None = None  # None: Moshi 7B
    mimi_config: dict | None = None  # None: the published Mimi's
    clip_tau: float | None = None  # None: the saved setting
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42424242  # moshi's server's
    greedy: bool = False
    temp: float = 0.8  # LMGen's defaults
    temp_text: float = 0.7
    static: Path | None = None  # moshi's web UI (its dist/ folder); None: the websocket only

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")
        if self.static is not None and not (Path(self.static) / "index.html").is_file():
            raise ValueError(f"--static: {self.static} holds no index.html (moshi's web UI: the dist/ folder of kyutai/moshi-artifacts' dist.tgz)")


def build_app(settings: ServeSettings):
    """`(aiohttp app, server state)`: moshi's `ServerState` on our model at ``/api/chat``, the web UI
    at ``/`` when `settings.static` is given. Run it with ``aiohttp.web.run_app(app, ...)``."""
    from aiohttp import web

    server = moshi_server()
    lm, _, mimi, tokenizer, device = load_player(settings, "moshi-serve")
    tokenizer = _Pieces(tokenizer)
    server.seed_all(settings.seed)
    gen = dict(use_sampling=not settings.greedy, temp=settings.temp, temp_text=settings.temp_text)
    state = _state_class()("moshi", mimi, tokenizer, lm, 1.0, device, **gen)
    state.connections = []
    state.warmup()
    app = web.Application()
    app.router.add_get("/api/chat", state.handle_chat)
    if settings.static is not None:  # what moshi's main() does with --static (inline there, not reusable)
        index = Path(settings.static) / "index.html"

        async def handle_root(_):
            return web.FileResponse(index)

        app.router.add_get("/", handle_root)
        app.router.add_static("/", path=str(settings.static), follow_symlinks=True, name="static")
    return app, state
