"""A real `ittt serve` on 127.0.0.1 for tests and benchmarks: the embedded base model, converted
with trained-looking TTT weights, or as it is; the server in a subprocess, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import inplace_ttt
from inplace_ttt.assets import base_model_dir

# the demo's TTT settings (`DemoSettings.ttt`) on two layers with a short chunk, so that a prompt of a few dozen tokens spans several
TTT = inplace_ttt.TTTConfig(layers=[1, 3], chunk_size=8, ttt_lr=3.0, target_source="token_embeddings", target_init="identity")


def save_base(out: Path, ttt: inplace_ttt.TTTConfig | None) -> Path:
    """The embedded base model and its tokenizer in `out`: as it is (`ttt` None), or converted with
    `ttt` and non-zero convolutions (as after training, so every complete chunk changes the fast weights)."""
    model = AutoModelForCausalLM.from_pretrained(base_model_dir(), dtype=torch.float32)
    if ttt is not None:
        model = inplace_ttt.convert(model, ttt)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, layer in inplace_ttt.ttt_layers(model):
                layer.ttt.conv_weight.copy_(torch.randn(layer.ttt.conv_weight.shape, generator=g) * 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model_dir()).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(model: Path, *options: str, log: Path, start_timeout: float = 240.0):
    """`ittt serve MODEL OPTIONS` on a free port of 127.0.0.1, on the CPU; yields its OpenAI base URL
    once /health answers, and stops the server on exit (SIGTERM, then SIGKILL after 20 s)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "inplace_ttt.cli", "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *options]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"ittt serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ittt serve did not answer /health within {start_timeout:.0f} s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
