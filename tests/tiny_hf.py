"""Tiny random transformers models and tokenizers for tests (nothing is downloaded)."""

from functools import partial

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

import inplace_ttt
from inplace_ttt import TTTConfig

FAMILIES = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "mistral": MistralConfig,
    "mistral_swa": partial(MistralConfig, sliding_window=5),  # each token attends to the last 5: tests run past the window
}
C = 4  # TTT chunk size in these tests
VOCAB = 97


def tiny(family="llama", **overrides):
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[family](**kw), attn_implementation="sdpa").eval()
    with torch.no_grad():  # the pad token gets an embedding of its own, as when eos pads: a zero row (the padding_idx start) keeps padded positions at zero in a model without biases, which would hide a leak of padding into real tokens or the fast weights
        model.get_input_embeddings().weight[kw["pad_token_id"]].normal_(0, model.config.initializer_range, generator=torch.Generator().manual_seed(3))
    return model


def ttt_config(**kw):
    return TTTConfig(**{"layers": "every 2", "chunk_size": C, "ttt_lr": 0.5, **kw})


def converted(family="llama", trained=True, arch=None, **kw):
    """A converted tiny model (`arch`: overrides of its shape, e.g. a sliding window); `kw`: TTT settings."""
    model = inplace_ttt.convert(tiny(family, **(arch or {})), ttt_config(**kw))
    if trained:  # the warm start makes TTT a no-op: give it weights as after training
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for _, layer in inplace_ttt.ttt_layers(model):
                if layer.ttt.conv_weight is not None:  # None: the target switches' ablations
                    layer.ttt.conv_weight.copy_(torch.randn(layer.ttt.conv_weight.shape, generator=g) * 0.3)
                if layer.ttt.target_weight is not None:
                    layer.ttt.target_weight.add_(torch.randn(layer.ttt.target_weight.shape, generator=g) * 0.2)
    return model


def left_padded(lengths, total, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, total - n :] = 1
        ids[b, : total - n] = 0
    return ids, mask


def logits(model, ids, mask=None, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits


def tiny_tokenizer(words: list[str], bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (ids from 3: 0 pad, 1 bos, 2 eos); `bos`: it opens every
    text with BOS, as Llama's and Mistral's tokenizers do (Qwen's add nothing)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
