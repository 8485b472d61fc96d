"""Serving throughput of a converted model against the same model unconverted, on the same server
(`ittt serve`, transformers' own) and the same client (`openai`).

The embedded base model (4.5M-parameter sliding-window Mistral) as it is, and converted with the
demo's TTT settings (`DemoSettings.ttt`: layer 3, chunk 64, targets from the token embeddings) and
non-zero convolutions, so every complete chunk updates the fast weights (`tests/tiny_server.py`). Both servers run at once on 127.0.0.1 (CPU, one thread each); rounds
alternate between them, and each round sends `--concurrent` streamed greedy requests at once, each a
different held-out passage of `--prompt` tokens asking for `--new` tokens. Requests/s: the round's
requests over its wall time; time to first token: from sending a request to its first streamed text.
Medians over rounds and requests; the interval of each ratio is a 95% bootstrap over the paired rounds.

    python benchmarks/serve.py
    python benchmarks/serve.py --rounds 20 --prompt 512 --new 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from inplace_ttt.assets import base_model_dir, corpus_files  # noqa: E402
from inplace_ttt.demo import DemoSettings  # noqa: E402
from inplace_ttt.documents import read_documents  # noqa: E402
from tests.tiny_server import running_server, save_base  # noqa: E402


def prompts(count: int, length: int) -> list[str]:
    """`count` held-out passages of `length` tokens each (the embedded tokenizer's)."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
    ids = [i for doc in read_documents(corpus_files("heldout")) for i in tokenizer(doc, add_special_tokens=False).input_ids]
    return [tokenizer.decode(ids[k * length : (k + 1) * length]) for k in range(count)]


def one_round(api, model: str, texts: list[str], new: int) -> tuple[float, list[float]]:
    """Send `texts` at once, streamed; (requests/s of the round, each request's time to first token).
    Every request generates exactly `new` tokens (an end-of-text token does not stop it early)."""
    first = [None] * len(texts)
    generated = [None] * len(texts)
    exactly = {"generation_config": json.dumps({"min_new_tokens": new, "max_new_tokens": new, "do_sample": False})}

    def ask(i):
        start = time.perf_counter()
        for chunk in api.completions.create(model=model, prompt=texts[i], max_tokens=new, temperature=0, stream=True, extra_body=exactly):
            if first[i] is None and chunk.choices and chunk.choices[0].text:
                first[i] = time.perf_counter() - start
            if chunk.usage is not None:
                generated[i] = chunk.usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    wall = time.perf_counter() - start
    if any(thread.is_alive() for thread in threads) or None in first or generated != [new] * len(texts):
        raise RuntimeError(f"a request did not finish, streamed no text or generated other than {new} tokens ({generated})")
    return len(texts) / wall, first


def ratio_interval(ttt: list[float], base: list[float]) -> tuple[float, float]:
    """95% bootstrap interval of median(ttt) / median(base) over paired rounds."""
    result = bootstrap(
        (np.array(ttt), np.array(base)),
        lambda a, b: np.median(a) / np.median(b),
        paired=True,
        vectorized=False,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds per model (after one warm-up round each)")
    parser.add_argument("--concurrent", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--new", type=int, default=32, help="tokens to generate")
    args = parser.parse_args()
    from openai import OpenAI

    texts = prompts(args.concurrent * (args.rounds + 1), args.prompt)
    os.environ["OMP_NUM_THREADS"] = "1"  # the servers inherit it: one thread each, so neither starves the other
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        folders = {name: save_base(Path(tmp) / name, ttt) for name, ttt in (("baseline", None), ("ttt", DemoSettings().ttt))}
        urls = {name: stack.enter_context(running_server(folder, "--dtype", "float32", log=Path(tmp) / f"{name}.log")) for name, folder in folders.items()}
        apis = {name: OpenAI(base_url=url, api_key="unused", timeout=600, max_retries=0) for name, url in urls.items()}
        rates = {name: [] for name in folders}
        ttfts = {name: [] for name in folders}
        for r in range(args.rounds + 1):
            batch = texts[r * args.concurrent : (r + 1) * args.concurrent]
            for name in ("baseline", "ttt") if r % 2 else ("ttt", "baseline"):
                rate, first = one_round(apis[name], str(folders[name]), batch, args.new)
                if r:  # round 0 warms up
                    rates[name].append(rate)
                    ttfts[name].append(statistics.median(first))
    load_after = os.getloadavg()

    print(f"{args.concurrent} concurrent streamed requests, prompt {args.prompt} tokens, {args.new} new, {args.rounds} rounds per model")
    print(f"TTT: {DemoSettings().ttt}; load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    print("| model | requests/s | time to first token (s) |")
    print("|---|---|---|")
    for name in ("baseline", "ttt"):
        print(f"| {name} | {statistics.median(rates[name]):.2f} | {statistics.median(ttfts[name]):.3f} |")
    ratios = []
    for values in (rates, ttfts):
        low, high = ratio_interval(values["ttt"], values["baseline"])
        ratios.append(f"{statistics.median(values['ttt']) / statistics.median(values['baseline']):.3f} [{low:.3f}, {high:.3f}]")
    print(f"| ttt / baseline | {ratios[0]} | {ratios[1]} |")


if __name__ == "__main__":
    main()
