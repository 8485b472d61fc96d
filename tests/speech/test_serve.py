"""`ittt moshi-serve`: moshi's server on 127.0.0.1 with a tiny In-Place TTT model, talked to by a
real websocket client (aiohttp) that streams espeak-ng speech as Opus (sphn) and gets Moshi's
audio and text back; each conversation starts from the pretrained weights."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import soxr
import torch

from inplace_ttt import TTTConfig
from inplace_ttt.families.moshi import load_moshi, save_ttt
from inplace_ttt.speech.serve import ServeSettings, build_app, moshi_server
from tests.speech.conftest import LM_KWARGS, WORDS, spoken
from tests.tiny_moshi import active_targets

aiohttp = pytest.importorskip("aiohttp")
sphn = pytest.importorskip("sphn")

CHUNK = 8
FRAME = 1920  # Mimi's frame: 80 ms at 24 kHz


@pytest.fixture(scope="module")
def ttt_model(kit, tmp_path_factory):
    """The kit's LMModel converted (TTT on layers 0 and 2, chunk 8) with trained-looking targets, saved."""
    lm = load_moshi(kit["weights"], LM_KWARGS, config=TTTConfig(layers=[0, 2], chunk_size=CHUNK, target_source="token_embeddings"), dtype=torch.float32)
    active_targets(lm)
    return save_ttt(lm, tmp_path_factory.mktemp("ttt"))


def speech(n_words: int) -> np.ndarray:
    """espeak-ng saying `n_words` words at 24 kHz, a whole number of Mimi frames."""
    x = soxr.resample(np.concatenate([np.pad(spoken(w), (0, 2000)) for w in WORDS[:n_words]]), 22050, 24000).astype(np.float32)
    return x[: len(x) // FRAME * FRAME]


async def talk(url: str, pcm: np.ndarray, frames_out: int) -> tuple[np.ndarray, list[str]]:
    """One conversation as moshi's client holds it: the handshake, the user's audio as Opus pages
    behind 0x01 (one a frame), Moshi's audio (0x01) and text (0x02) back, until `frames_out` frames
    of audio have come (and a moment more, for the last text)."""
    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    audio, text = [], []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        assert await ws.receive_bytes() == b"\x00"

        async def receive():
            while sum(map(len, audio)) < frames_out * FRAME:
                message = await ws.receive_bytes()
                if message[0] == 1:
                    audio.append(reader.append_bytes(message[1:]))
                else:
                    assert message[0] == 2
                    text.append(message[1:].decode())

        receiving = asyncio.create_task(receive())
        for i in range(0, len(pcm), FRAME):
            await ws.send_bytes(b"\x01" + writer.append_pcm(pcm[i : i + FRAME]))
        await receiving
        try:
            while True:
                message = await ws.receive_bytes(timeout=1.0)
                assert message[0] == 2, "audio past the input's frames"
                text.append(message[1:].decode())
        except asyncio.TimeoutError:
            pass
    return np.concatenate(audio), text


async def conversations(app, state, inputs: list[np.ndarray], frames_out: list[int]):
    """Serve `app` on 127.0.0.1 (a free port), hold the conversations one after the other, stop the server."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        replies = [await asyncio.wait_for(talk(f"ws://127.0.0.1:{port}/api/chat", pcm, n), 120) for pcm, n in zip(inputs, frames_out)]
        for _ in range(200):  # the server's side of the last conversation ends once it sees the close
            if len(state.connections) == len(inputs):
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    return replies


@pytest.mark.integration
def test_two_conversations_each_start_from_the_pretrained_weights(kit, ttt_model):
    app, state = build_app(
        ServeSettings(
            ttt_model / "model.safetensors",
            kit["mimi"],
            kit["tokenizer"],
            ttt=ttt_model / "ttt.safetensors",
            lm_kwargs=LM_KWARGS,
            mimi_config=json.loads(kit["mimi_config"].read_text()),
            device="cpu",
            greedy=True,
        )
    )
    pcm = speech(8)
    frames = len(pcm) // FRAME
    out = frames - max(LM_KWARGS["delays"])  # LMGen answers a step `max(delays)` steps late
    first, second = asyncio.run(conversations(app, state, [pcm, pcm], [out, out]))

    one, two = state.connections
    expected = {0: frames // CHUNK, 2: frames // CHUNK}  # one step a frame, one update a chunk of steps
    for c in (one, two):
        assert c.steps == frames and c.norm_at_start == {0: 0.0, 2: 0.0}
        assert c.updates == expected and all(n > 0 for n in c.norm.values())
    for audio, text in (first, second):
        assert audio.shape == (out * FRAME,) and np.isfinite(audio).all() and np.abs(audio).max() > 0
        assert text  # pieces of the kit's tokenizer, "▁" as a space
    # greedy and fresh: the same input gives the same conversation; carried-over fast weights would not
    assert np.array_equal(first[0], second[0]) and first[1] == second[1]
    assert one.norm == two.norm


@pytest.mark.integration
def test_without_ttt_the_plain_model_is_served(kit):
    app, state = build_app(
        ServeSettings(kit["weights"], kit["mimi"], kit["tokenizer"], lm_kwargs=LM_KWARGS, mimi_config=json.loads(kit["mimi_config"].read_text()), device="cpu")
    )
    pcm = speech(3)
    ((audio, _),) = asyncio.run(conversations(app, state, [pcm], [len(pcm) // FRAME - 1]))
    assert audio.shape == (len(pcm) - FRAME,) and state.connections[0].updates == {}


def test_moshis_server_module_loads_without_running_its_main(monkeypatch):
    """moshi.server calls main() at import; ours leaves that call out (a main() would parse these
    arguments and exit, or download Kyutai's model)."""
    monkeypatch.setattr(sys, "argv", ["pytest", "--no-such-flag"])
    server = moshi_server()
    assert server.ServerState.__module__ == "moshi.server" and callable(server.seed_all) and callable(server.main)


def test_static_needs_the_web_uis_index(tmp_path, kit):
    with pytest.raises(ValueError, match="--static: .* holds no index.html"):
        ServeSettings(kit["weights"], kit["mimi"], kit["tokenizer"], static=tmp_path)


@pytest.mark.integration
def test_the_command_serves_the_web_ui_and_the_chat_until_stopped(kit, tmp_path):
    """`ittt moshi-serve` as a process: the UI's index at /, the handshake at /api/chat; stopped by the test."""
    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "index.html").write_text("<html>moshi</html>")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "inplace_ttt.cli", "moshi-serve", "--weights", str(kit["weights"]), "--mimi", str(kit["mimi"])]
    cmd += ["--mimi-config", str(kit["mimi_config"]), "--tokenizer", str(kit["tokenizer"]), "--lm-kwargs", str(kit["lm_config"])]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--static", str(tmp_path / "ui"), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:

        async def check():
            async with aiohttp.ClientSession() as session:
                for _ in range(600):  # the process loads the model first: up to 60 s on a busy machine
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/") as r:
                            page = await r.text()
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
                async with session.ws_connect(f"ws://127.0.0.1:{port}/api/chat") as ws:
                    return page, await ws.receive_bytes(timeout=30)

        assert asyncio.run(asyncio.wait_for(check(), 90)) == ("<html>moshi</html>", b"\x00")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output
