"""RULER-style prompts: requested lengths, needle depths, determinism, scoring."""

import pytest

from inplace_ttt.eval.ruler import SINGLE_DEPTHS, TASK_NAMES, make_samples, prompt_ids, score
from tests.eval.conftest import CHAT, WORDS
from tests.tiny_hf import tiny_tokenizer


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("length", [256, 1024, 3000])
def test_prompts_hit_the_requested_length(task, length, tokenizer):
    for s in make_samples(task, tokenizer, length, 3):
        assert 0.99 * length <= n_tokens(tokenizer, s.prompt) == s.tokens == len(s.ids) <= length
        assert s.answers and all(isinstance(a, str) and a for a in s.answers)


def test_single_needles_sweep_the_depths_and_land_there(tokenizer):
    samples = make_samples("niah_single", tokenizer, 2000, len(SINGLE_DEPTHS))
    assert [s.depths[0] for s in samples] == list(SINGLE_DEPTHS)
    for s in samples:
        intro, rest = s.prompt.split("\n", 1)
        context = rest.rsplit("\n", 1)[0]
        needle = "The secret code for"
        before = context[: context.index(needle)]
        depth = n_tokens(tokenizer, before) / n_tokens(tokenizer, context)
        assert abs(depth - s.depths[0]) < 0.03, (depth, s.depths[0])


def test_multi_needle_tasks_hide_every_needle_at_its_depth(tokenizer):
    for task, hidden in (("niah_multikey", 4), ("niah_multivalue", 4), ("niah_multiquery", 4), ("vt", 5)):
        s = make_samples(task, tokenizer, 1500, 1)[0]
        context = s.prompt.split("\n", 1)[1].rsplit("\n", 1)[0]
        marker = "VAR " if task == "vt" else "The secret code for "
        assert context.count(marker) == hidden + (task == "vt") * (hidden - 1)  # vt chains name two vars per line
        assert len(s.depths) == hidden and s.depths == sorted(s.depths)
        for a in s.answers:
            assert a in context


def test_same_seed_same_prompts(tokenizer):
    for task in TASK_NAMES:
        a = make_samples(task, tokenizer, 512, 2, seed=7)
        b = make_samples(task, tokenizer, 512, 2, seed=7)
        c = make_samples(task, tokenizer, 512, 2, seed=8)
        assert [(s.prompt, s.answers) for s in a] == [(s.prompt, s.answers) for s in b]
        assert [s.prompt for s in a] != [s.prompt for s in c]


@pytest.mark.parametrize(
    "prediction, answers, metric, expected",
    [
        (" 1234567.", ["1234567"], "all", 1.0),
        (" 123456.", ["1234567"], "all", 0.0),  # a near miss is a miss
        (" 12345678", ["1234567"], "all", 1.0),  # RULER's containment rule
        ("1111111 and 2222222", ["1111111", "2222222", "3333333"], "all", 2 / 3),
        ("none of them", ["1111111", "2222222"], "all", 0.0),
        ("ABCDE", ["abcde", "fghij"], "all", 0.5),  # case-insensitive
        ("fghij", ["abcde", "fghij"], "part", 1.0),
        ("fghi", ["abcde", "fghij"], "part", 0.0),
    ],
)
def test_scoring(prediction, answers, metric, expected):
    assert score(prediction, answers, metric) == pytest.approx(expected)


def test_too_short_and_unknown(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        make_samples("cwe", tokenizer, 40, 1)
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        make_samples("qa", tokenizer, 512, 1)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_a_chat_template_wraps_the_task_and_the_answer_starts_the_assistant_turn(task, tokenizer):
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT
    plain = make_samples(task, tokenizer, 700, 2)
    wrapped = make_samples(task, chat, 700, 2, chat_template=True)
    for p, w in zip(plain, wrapped):
        body = w.prompt.removeprefix("<|user|> ").split(" <|end|> <|assistant|> ")[0]
        assert w.prompt == f"<|user|> {body} <|end|> <|assistant|> {w.answer_prefix}"
        assert p.prompt.endswith(f"? {p.answer_prefix}") and w.answer_prefix == p.answer_prefix and body.endswith("?")
        assert 0.99 * 700 <= n_tokens(chat, w.prompt) == w.tokens <= 700  # the template's tokens count
        assert w.ids == prompt_ids(chat, w.prompt, chat_template=True)
        assert w.answers == p.answers
    with pytest.raises(ValueError, match="--chat-template: the models' tokenizer has no chat template"):
        make_samples(task, tokenizer, 700, 1, chat_template=True)


def test_prompts_carry_the_tokenizers_bos_as_the_model_reads_them():
    """A tokenizer that opens every text with BOS (Llama's, Mistral's): the plain prompt's ids start
    with it and its length counts it; a chat template's text holds its own, so none is added there."""
    import copy

    plain = tiny_tokenizer(WORDS, bos=True)
    for s in make_samples("niah_single", plain, 512, 2):
        assert s.ids[0] == plain.bos_token_id and s.ids.count(plain.bos_token_id) == 1
        assert s.ids[1:] == plain(s.prompt, add_special_tokens=False)["input_ids"] and s.tokens == len(s.ids) <= 512
    chat = copy.deepcopy(plain)
    chat.chat_template = "<s> " + CHAT  # the template writes BOS, as Llama's does
    for s in make_samples("niah_single", chat, 512, 2, chat_template=True):
        assert s.ids == chat(s.prompt, add_special_tokens=False)["input_ids"] and s.ids.count(chat.bos_token_id) == 1
