"""Tiny GGUF checkpoints for tests, written with the `gguf` package (llama.cpp's layout, our own code).

`write_gguf(model, path)` stores a transformers Llama as llama.cpp's converter would: its tensor
names, the query and key rows of each head in interleaved rotary order, no ``output.weight`` when
the embeddings are tied, and (optionally) a byte-level BPE tokenizer. transformers reads it back
with ``from_pretrained(dir, gguf_file=name)``; a float32 file gives back the model's exact logits.
"""

from __future__ import annotations

import json

import numpy as np

GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "lm_head": "output", "model.norm": "output_norm"}
LAYER_PARTS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from transformers' rotary halves ``(x_0..x_{n/2-1}, y_0..)`` to llama.cpp's
    pairs ``(x_0, y_0, x_1, y_1, ...)``: per head, ``[2, n/2] -> [n/2, 2]``."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(name: str) -> str:
    module = name.rsplit(".", 1)[0]
    if module.startswith("model.layers."):
        index, part = module[len("model.layers.") :].split(".", 1)
        return f"blk.{index}.{LAYER_PARTS[part]}.weight"
    return f"{GLOBAL_NAMES[module]}.weight"


def write_gguf(model, path, *, quantize=None, tokenizer=None) -> None:
    """`model` (a transformers Llama) as a GGUF file; `quantize`: a `gguf.GGMLQuantizationType` for the
    matrices (float32 otherwise); `tokenizer`: a byte-level BPE fast tokenizer to store with it."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_embedding_length(c.hidden_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    if tokenizer is not None:
        _add_tokenizer(w, tokenizer)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue  # llama.cpp stores a tied head once, as the embeddings
        array = tensor.detach().float().numpy()
        target = gguf_name(name)
        if ".attn_q." in target:
            array = interleave_rotary(array, c.num_attention_heads)
        elif ".attn_k." in target:
            array = interleave_rotary(array, c.num_key_value_heads)
        if quantize is not None and array.ndim == 2:
            w.add_tensor(target, gguf.quants.quantize(array, quantize), raw_dtype=quantize)
        else:
            w.add_tensor(target, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_tokenizer(w, tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)


def byte_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE fast tokenizer trained on `texts` (ids 0 pad, 1 bos, 2 eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
