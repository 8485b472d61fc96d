"""`ittt serve` runs transformers' own server on a converted folder: checked with the real `openai`
client against a server on 127.0.0.1, every answer against the model's own `generate`."""

import threading
import time

import pytest
import torch
from transformers import AutoTokenizer

import inplace_ttt
from tests.tiny_server import TTT, running_server, save_base

pytestmark = pytest.mark.integration

PROMPTS = [
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And he said unto them, Go ye into all the world, and preach the gospel to every creature.",
    "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside the still waters.",
]
NEW = 16
CLIP = 1e-3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_base(tmp_path_factory.mktemp("served") / "ittt", TTT)


@pytest.fixture(scope="module")
def reference(folder):
    """Greedy completions of the model itself (`generate`, one prompt at a time): unclipped and clipped at CLIP."""
    model = inplace_ttt.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def complete(prompt):
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    plain = [complete(p) for p in PROMPTS]
    with inplace_ttt.clip_tau(model, CLIP):
        clipped = [complete(p) for p in PROMPTS]
    return plain, clipped


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key="unused", timeout=120, max_retries=0)


def completion(api, folder, prompt, stream=False, max_tokens=NEW):
    """The text of one greedy completion; streamed: the chunks' texts joined."""
    answer = api.completions.create(model=str(folder), prompt=prompt, max_tokens=max_tokens, temperature=0, stream=stream)
    if not stream:
        return answer.choices[0].text
    return "".join(chunk.choices[0].text for chunk in answer if chunk.choices)


def test_served_completions_equal_generate(folder, reference, tmp_path):
    plain, clipped = reference
    assert plain != clipped  # clipping changes these completions: the start-up test below can fail
    with running_server(folder, "--dtype", "float32", log=tmp_path / "server.log") as url:
        api = client(url)
        assert [completion(api, folder, p) for p in PROMPTS] == plain
        assert [completion(api, folder, p, stream=True) for p in PROMPTS] == plain

        # two requests in flight at once (one streamed, one not) each get what they get alone
        results, spans, together = {}, {}, threading.Barrier(2, timeout=60)

        def ask(i, stream):
            together.wait()
            start = time.monotonic()
            results[i] = completion(api, folder, PROMPTS[i], stream=stream)
            spans[i] = (start, time.monotonic())

        threads = [threading.Thread(target=ask, args=(0, True)), threading.Thread(target=ask, args=(2, False))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)
        assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())  # they overlapped
        assert results == {0: plain[0], 2: plain[2]}


def test_clip_tau_is_set_at_start_up(folder, reference, tmp_path):
    _, clipped = reference
    with running_server(folder, "--clip-tau", str(CLIP), "--dtype", "float32", log=tmp_path / "server.log") as url:
        assert [completion(client(url), folder, p) for p in PROMPTS] == clipped
