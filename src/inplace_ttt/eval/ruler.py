"""RULER-style synthetic long-context tasks, generated offline from a seed with the model's tokenizer.

After RULER (Hsieh et al., 2024, arXiv 2404.06654), with our own wording and word lists:

- ``niah_single``: one key-value needle in a haystack; ``niah_multikey``: the asked needle among
  distractor needles with other keys; ``niah_multivalue``: one key with several values, all
  asked; ``niah_multiquery``: several needles, several keys asked. Needle depths (0 = start of
  the context, 1 = end) are chosen per sample and recorded.
- ``vt`` (variable tracking): a chain ``VAR A = 12345 ... VAR B = VAR A ...`` hidden in the
  haystack; every variable that ends up holding the value is an answer.
- ``cwe`` / ``fwe``: the most common words of a long list (a few words repeated among many
  that appear once) / the most frequent words of a Zipf-distributed text of coded words.

Each prompt is built to the requested length in the model's own tokens (within 1%) by a binary
search over the amount of filler; the same seed gives the same prompts. Scoring follows RULER:
``all`` is the share of expected answers found in the generated text (case-insensitive),
``part`` is 1 if any is found.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

# our own filler and word lists ------------------------------------------------------------

NOISE = (
    "The river runs past the old mill. Morning light falls on the quiet hills. A gull circles over "
    "the harbour. The baker opens the shop at six. Leaves drift along the empty road."
)
ADJECTIVES = (
    "amber brave calm dusty eager faded gentle hollow icy jolly keen lively misty noble odd pale quick "
    "rustic silent tidy urban vivid wild young zesty bold crisp dark early fancy grand"
).split()
NOUNS = (
    "anchor basket candle dragon engine falcon garden harbor island jacket kettle lantern meadow needle "
    "orchard pepper quartz rocket saddle teapot umbrella violin walrus yacht zipper barrel castle dune ember fjord"
).split()
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

SINGLE_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TASK_NAMES = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")


@dataclass
class Sample:
    task: str
    length: int  # requested prompt length in tokens
    index: int
    prompt: str
    answers: list[str]
    metric: str  # "all" or "part"
    max_new_tokens: int
    tokens: int = 0  # actual prompt length in tokens
    depths: list[float] = field(default_factory=list)  # needle depths in the context, 0..1
    answer_prefix: str = ""  # the start of the answer, which follows the task text (and a chat template's turn)
    ids: list[int] = field(default_factory=list)  # the prompt's token ids, as the model reads them (`prompt_ids`)


def score(prediction: str, answers: list[str], metric: str) -> float:
    """RULER's string match: share of answers found (``all``) or whether any is found (``part``)."""
    found = [a.lower() in prediction.lower() for a in answers]
    return sum(found) / len(found) if metric == "all" else float(any(found))


def make_samples(task: str, tokenizer, length: int, count: int, seed: int = 0, haystack: str | None = None, chat_template: bool = False) -> list[Sample]:
    """`count` samples of `task` whose prompts have `length` tokens (within 1%).

    chat_template: the task text is the user's turn of the tokenizer's chat template, and the
    answer starts the assistant's turn (as RULER prompts instruct models); the length counts it all."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; tasks: {TASK_NAMES}")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat-template: the models' tokenizer has no chat template (tokenizer_config.json 'chat_template')")
    build = _BUILDERS[task]
    filler = (haystack or NOISE).split()
    out = []
    for index in range(count):
        key = f"{seed}:{task}:{length}:{index}"  # a str seed hashes the same in every process
        sample = _fit(lambda n: _prompted(build(random.Random(key), filler, n, index), tokenizer, chat_template), tokenizer, length, chat_template)  # noqa: B023 (called in this iteration)
        sample.task, sample.length, sample.index = task, length, index
        out.append(sample)
    return out


def _prompted(sample: Sample, tokenizer, chat_template: bool) -> Sample:
    """The sample with its whole prompt: task text and answer prefix, plain or in the chat template."""
    if chat_template:
        turn = tokenizer.apply_chat_template([{"role": "user", "content": sample.prompt}], tokenize=False, add_generation_prompt=True)
        sample.prompt = turn + sample.answer_prefix
    else:
        sample.prompt = f"{sample.prompt} {sample.answer_prefix}"
    return sample


def prompt_ids(tokenizer, prompt: str, chat_template: bool = False) -> list[int]:
    """A prompt's token ids as the model reads them: with the tokenizer's own special tokens, as
    `generate` and pipelines get them (a Llama's or Mistral's BOS opens the prompt; Qwen's tokenizer
    adds none), or as the chat template wrote them (its text holds its BOS)."""
    return tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]


def _fit(build: Callable[[int], Sample], tokenizer, length: int, chat_template: bool) -> Sample:
    """The largest filler size whose prompt fits in `length` tokens (binary search)."""

    def n_tokens(sample: Sample) -> int:
        return len(prompt_ids(tokenizer, sample.prompt, chat_template))

    lo, hi = 0, 1
    while n_tokens(build(hi)) <= length:
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            raise ValueError(f"cannot reach {length} tokens: the prompt stops growing")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_tokens(build(mid)) <= length:
            lo = mid
        else:
            hi = mid
    sample = build(lo)
    sample.ids = prompt_ids(tokenizer, sample.prompt, chat_template)
    sample.tokens = len(sample.ids)
    if sample.tokens > length:
        raise ValueError(f"{length} tokens is too short for this task: its smallest prompt has {sample.tokens}")
    if sample.tokens < 0.99 * length:
        raise ValueError(f"cannot build a prompt of {length} tokens within 1% (got {sample.tokens}): the filler is too coarse")
    return sample


def _filler(words: list[str], n: int) -> list[str]:
    """The first `n` words of the filler, repeated as needed."""
    return [words[i % len(words)] for i in range(n)]


def _insert(words: list[str], sentences: list[str], depths: list[float]) -> str:
    """Insert each sentence after the sentence end nearest to its depth in `words`."""
    ends = [i + 1 for i, w in enumerate(words) if w.endswith(".")] or [len(words)]
    cut = {}
    for sentence, depth in zip(sentences, depths):
        target = depth * len(words)
        spot = 0 if depth == 0 else min(ends, key=lambda e: abs(e - target))
        cut.setdefault(spot, []).append(sentence)
    out = []
    for i in range(len(words) + 1):
        out += cut.get(i, [])
        if i < len(words):
            out.append(words[i])
    return " ".join(out)


def _key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _niah(keys: int, values: int, queries: int, depth_cycle: bool) -> Callable:
    def build(rng: random.Random, filler: list[str], n: int, index: int) -> Sample:
        names = []
        while len(names) < keys:
            k = _key(rng)
            if k not in names:
                names.append(k)
        table = {k: [_number(rng) for _ in range(values)] for k in names}
        needles = [f"The secret code for {k} is {v}." for k in names for v in table[k]]
        rng.shuffle(needles)
        depths = sorted(rng.random() for _ in needles)
        if depth_cycle:  # single needle: samples sweep the depths
            depths = [SINGLE_DEPTHS[index % len(SINGLE_DEPTHS)]]
        asked = rng.sample(names, queries)
        context = _insert(_filler(filler, n), needles, depths)
        what = " and ".join(asked)
        plural = len(asked) * values > 1
        question = f"What {'are all the secret codes' if plural else 'is the secret code'} for {what} in the text above?"
        prefix = f"The secret code{'s' if plural else ''} for {what} {'are' if plural else 'is'}"
        prompt = f"Secret codes are hidden in the text below. Remember them: you will be asked about them.\n{context}\n{question}"
        answers = [v for k in asked for v in table[k]]
        return Sample("", 0, 0, prompt, answers, "all", 16 * len(answers) + 16, depths=depths, answer_prefix=prefix)

    return build


def _vt(rng: random.Random, filler: list[str], n: int, index: int) -> Sample:
    value = str(rng.randint(10_000, 99_999))
    names = []
    while len(names) < 5:
        name = "".join(rng.choice(LETTERS) for _ in range(5))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = sorted(rng.random() for _ in chain)
    context = _insert(_filler(filler, n), chain, depths)
    prompt = f"Follow the variable assignments hidden in the text below.\n{context}\nWhich variables are assigned the value {value}?"
    return Sample("", 0, 0, prompt, names, "all", 40, depths=depths, answer_prefix=f"The variables assigned the value {value} are")


def _pseudo_words(rng: random.Random, count: int, syllables: int = 3) -> list[str]:
    """`count` distinct made-up words like ``ralomi`` (enough for any context length)."""
    out: dict[str, None] = {}
    while len(out) < count:
        out["".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(syllables))] = None
    return list(out)


def _cwe(rng: random.Random, filler: list[str], n: int, index: int) -> Sample:
    chosen = _pseudo_words(rng, 10 + n)
    common, rare = chosen[:10], chosen[10:]
    items = common * 4 + rare
    rng.shuffle(items)
    listing = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))
    prompt = f"Below is a numbered list of words. Some of them appear several times.\n{listing}\nQuestion: which 10 words appear most often in the list?"
    return Sample("", 0, 0, prompt, common, "all", 120, answer_prefix="Answer: the 10 most common words are")


def _fwe(rng: random.Random, filler: list[str], n: int, index: int) -> Sample:
    vocab = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(4)) for _ in range(400)]
    weights = [1.0 / (r + 1) ** 1.5 for r in range(len(vocab))]
    while True:
        words = rng.choices(vocab, weights, k=n + 20)
        counts = {w: words.count(w) for w in set(words)}
        ranked = sorted(counts.values(), reverse=True) + [0, 0, 0, 0]
        if ranked[2] > ranked[3]:  # a clear top 3
            break
    top = sorted(counts, key=counts.get, reverse=True)[:3]
    prompt = f"Read the coded text below and count how often each coded word appears.\n{' '.join(words)}\nQuestion: which 3 coded words appear most often?"
    return Sample("", 0, 0, prompt, top, "all", 50, answer_prefix="Answer: the 3 most frequent coded words are")


_BUILDERS = {
    "niah_single": _niah(keys=1, values=1, queries=1, depth_cycle=True),
    "niah_multikey": _niah(keys=4, values=1, queries=1, depth_cycle=False),
    "niah_multivalue": _niah(keys=1, values=4, queries=1, depth_cycle=False),
    "niah_multiquery": _niah(keys=4, values=1, queries=2, depth_cycle=False),
    "vt": _vt,
    "cwe": _cwe,
    "fwe": _fwe,
}
