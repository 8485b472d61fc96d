import torch

from inplace_ttt.train.data import collate, pack, tokenize
from tests.tiny_hf import tiny_tokenizer


def test_pack_restarts_positions_per_document_and_continues_long_ones():
    docs = [[1] * 5, [2] * 9, [3] * 3]
    rows = pack(docs, 6, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 1, 1, 1, 1, 2], [2, 2, 2, 2, 2, 2], [2, 2, 3, 3, 3, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 2, -1]]  # padding: no document
    # the first token of every piece is not predicted from what precedes it; padding is not a target
    assert rows.labels.tolist() == [[-100, 1, 1, 1, 1, -100], [-100, 2, 2, 2, 2, 2], [-100, 2, -100, 3, 3, -100]]
    assert rows.document_lengths().tolist() == [5, 1, 6, 2, 3]


def test_pack_keeps_every_token_in_order():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(1, 40, (20,), generator=g)]
    rows = pack(docs, 16, pad_id=0)
    flat = rows.input_ids.flatten().tolist()
    total = sum(len(d) for d in docs)
    assert flat[:total] == [t for d in docs for t in d]
    assert rows.labels.flatten()[total:].eq(-100).all()


def test_collate_stacks_rows_without_attention_mask():
    rows = pack([[1, 2, 3, 4]], 2, pad_id=0)
    batch = collate([rows[0], rows[1]])
    assert set(batch) == {"input_ids", "labels", "position_ids"} and batch["input_ids"].shape == (2, 2)


def test_tokenize_appends_eos():
    tok = tiny_tokenizer(["a", "b"])
    assert tokenize(["a b", "b", ""], tok) == [[4, 5, 2], [5, 2]]
    assert tokenize(["a b", "b"], tok, add_eos=False) == [[4, 5], [5]]


def test_tokenize_keeps_the_tokenizers_own_bos_and_never_doubles_eos():
    """A tokenizer that opens every text with BOS (Llama's, Mistral's) gets it at each document, as in
    its pretraining; one that also closes texts with EOS does not get a second."""
    from tokenizers import processors

    bos = tiny_tokenizer(["a", "b"], bos=True)
    assert tokenize(["a b", "b", ""], bos) == [[1, 4, 5, 2], [1, 5, 2]]  # the empty document is dropped, BOS alone is no text
    assert tokenize(["zz"], bos) == [[1, 3, 2]]  # unknown words are text (the tokenizer's <unk>, a special token)
    both = tiny_tokenizer(["a", "b"])
    both.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    assert tokenize(["a b"], both) == [[1, 4, 5, 2]]


def reference_pack(docs, row_length):
    """Positions by a plain loop over tokens: restart with each document and each row; -1 pads the last row."""
    pos, col = [], 0
    for doc in docs:
        for i in range(len(doc)):
            pos.append(0 if i == 0 or col == 0 else pos[-1] + 1)
            col = (col + 1) % row_length
    return pos + [-1] * (-len(pos) % row_length)


def test_pack_matches_a_plain_loop_and_padding_is_no_document():
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 50, (int(n),), generator=g).tolist() for n in torch.randint(1, 70, (40,), generator=g)]
    rows = pack(docs, 16, pad_id=0)
    assert rows.position_ids.flatten().tolist() == reference_pack(docs, 16)
    pad = rows.position_ids == -1
    assert pad.any() and rows.labels[pad].eq(-100).all() and rows.input_ids[pad].eq(0).all()
    # pieces, what TTT sees as documents, from the plain loop's positions: the padding is none of them
    starts = [i for i, p in enumerate(reference_pack(docs, 16)) if p == 0] + [sum(map(len, docs))]
    assert rows.document_lengths().tolist() == [b - a for a, b in zip(starts, starts[1:])]


def test_short_documents_that_leave_ttt_inert_are_refused(workspace, capsys):
    """Documents of ~14 tokens with chunk 8: no document spans two chunks. The padding at the end
    of the last row once looked like a 166-token document and let the run through."""
    from inplace_ttt.cli import main
    from tests.train.conftest import edit, write_docs

    short = write_docs(workspace["root"] / "short", 30, words_per_doc=(10, 14))  # ~390 tokens: the row ends in padding
    edit(workspace["config"], data={"train": [str(short)], "eval": [], "row_length": 512})
    assert main(["train", str(workspace["config"])]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ittt train: error: data.train: every document holds fewer than two TTT chunks (16 tokens; the longest has 15)"), last
    assert not workspace["run"].exists()
