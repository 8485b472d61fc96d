"""Saving and loading a converted transformers model: round trip, what a plain folder needs, clipping at load, GGUF, the tokenizer."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import inplace_ttt
from tests.tiny_hf import FAMILIES, VOCAB, converted, left_padded, logits, tiny, ttt_config


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(tmp_path, family):
    model = converted(family)
    model.save_pretrained(tmp_path)
    ids, mask = left_padded([13, 9], 13)
    loaded = inplace_ttt.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert {n for n, _ in model.named_parameters() if ".ttt." in n} <= keys
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))


def test_loading_a_plain_checkpoint_says_what_to_do(tmp_path):
    tiny().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an In-Place TTT checkpoint"):
        inplace_ttt.from_pretrained(tmp_path)


def test_clip_tau_at_load_and_at_generation(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path)
    ids = torch.randint(3, VOCAB, (1, 16))
    free = logits(model, ids)
    with inplace_ttt.clip_tau(model, 1e-5):
        clipped = logits(model, ids)
    assert not torch.allclose(free, clipped)
    assert torch.equal(logits(model, ids), free)  # restored
    loaded = inplace_ttt.from_pretrained(tmp_path, clip_tau=1e-5, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(loaded, ids), clipped, rtol=0, atol=0)
    assert all(layer.clip_tau == 1e-5 for _, layer in inplace_ttt.ttt_layers(loaded))


def test_a_gguf_loaded_model_converts_to_a_plain_float_checkpoint(tmp_path):
    import gguf

    from inplace_ttt.families.hf import load_causal_lm
    from tests.tiny_gguf import write_gguf

    original = tiny(tie_word_embeddings=True)
    write_gguf(original, tmp_path / "f32.gguf")
    write_gguf(original, tmp_path / "q8.gguf", quantize=gguf.GGMLQuantizationType.Q8_0)
    ids = torch.randint(3, VOCAB, (2, 20))
    # read as transformers reads it: dense float weights, but the GGUF quantizer attached (save_pretrained refuses)
    gguf_model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="f32.gguf")
    assert gguf_model.hf_quantizer is not None
    assert torch.equal(logits(gguf_model, ids), logits(original, ids))  # our writer's layout is llama.cpp's
    model = inplace_ttt.convert(gguf_model, ttt_config())
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["tie_word_embeddings"] is True
    loaded = inplace_ttt.from_pretrained(tmp_path / "saved")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # the tie kept
    assert torch.equal(logits(loaded, ids), logits(original, ids))
    # a quantized file, read dequantized: a model like any other, before and after conversion
    q8 = load_causal_lm(tmp_path, gguf_file="q8.gguf")
    assert getattr(q8, "hf_quantizer", None) is None and q8.lm_head.weight is q8.model.embed_tokens.weight
    reference = logits(q8, ids)
    assert 0 < (reference - logits(original, ids)).abs().max() < 0.05  # Q8_0 rounding
    inplace_ttt.convert(q8, ttt_config()).save_pretrained(tmp_path / "q8-saved")
    assert torch.equal(logits(inplace_ttt.from_pretrained(tmp_path / "q8-saved"), ids), reference)


def test_a_converted_directorys_tokenizer_loads_without_a_model_type_warning(tmp_path):
    import subprocess
    import sys

    from tests.tiny_hf import tiny_tokenizer

    converted().save_pretrained(tmp_path)
    tiny_tokenizer(["a", "b"]).save_pretrained(tmp_path)
    code = (
        f"import inplace_ttt, transformers; model = inplace_ttt.from_pretrained(r'{tmp_path}'); "
        f"tok = transformers.AutoTokenizer.from_pretrained(r'{tmp_path}'); print(type(tok).__name__)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "TokenizersBackend" in run.stdout and "model of type" not in run.stderr, run.stderr


def test_a_model_folder_with_only_pickled_weights_is_refused_with_the_command_that_converts_it(tmp_path):
    import re

    from safetensors.torch import load_file

    from inplace_ttt.families.hf.loading import load_causal_lm

    model = tiny()
    model.save_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")  # what older transformers wrote
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"holds its weights only as pickles \(pytorch_model.bin\), which are never loaded: convert") as refused:
        load_causal_lm(tmp_path)
    command = re.search(r'python -c "(.*)"$', str(refused.value)).group(1)
    exec(command, {})  # the one line the message gives, run as it stands
    assert (tmp_path / "model.safetensors").is_file()
    ids, mask = left_padded([5], 5)
    assert torch.equal(logits(load_causal_lm(tmp_path, dtype=torch.float32).eval(), ids, mask), logits(model.eval(), ids, mask))


def test_ttt_weights_come_from_the_files_transformers_reads(tmp_path):
    """Sharded, and beside a stray weights file holding the same TTT names (a copy, an earlier
    save): the TTT weights come from the index's shards, as the base weights do."""
    from safetensors.torch import save_file

    ids, mask = left_padded([13, 9], 13)
    model = converted()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    stray = {n: torch.zeros_like(p) for n, p in model.named_parameters() if ".ttt." in n}
    save_file({n: t.contiguous() for n, t in stray.items()}, str(tmp_path / "zz-old.safetensors"))  # read last by a glob
    assert torch.equal(logits(inplace_ttt.from_pretrained(tmp_path), ids, mask), logits(model, ids, mask))


def test_the_loaders_arguments_work_as_with_transformers(tmp_path):
    """use_safetensors, the config's own settings given at load (use_cache, output_hidden_states),
    a saved use_cache, output_loading_info: as transformers takes them, through both loaders."""
    from transformers import AutoModelForCausalLM

    ids, mask = left_padded([13, 9], 13)
    model = converted("qwen3")
    model.config.use_cache = False
    model.save_pretrained(tmp_path)
    for load in (inplace_ttt.from_pretrained, AutoModelForCausalLM.from_pretrained):
        assert load(tmp_path).config.use_cache is False  # as saved
        assert torch.equal(logits(load(tmp_path, use_safetensors=True), ids, mask), logits(model, ids, mask))
        again = load(tmp_path, use_cache=True, output_hidden_states=True)
        assert again.config.use_cache is True and again.config.output_hidden_states is True
        loaded, info = load(tmp_path, output_loading_info=True)
        assert inplace_ttt.families.hf.is_converted(loaded) and not info["missing_keys"] and not info["unexpected_keys"]
    with pytest.raises(ValueError, match="use_safetensors=False, but In-Place TTT checkpoints load from safetensors only"):
        inplace_ttt.from_pretrained(tmp_path, use_safetensors=False)


def test_a_folder_missing_a_base_weight_is_refused_naming_it(tmp_path):
    """transformers would fill it at random (its report of the missing key silenced with the expected TTT ones)."""
    from safetensors.torch import load_file, save_file

    converted().save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.layers.1.self_attn.q_proj.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks base weights \['model.layers.1.self_attn.q_proj.weight'\]: the folder is incomplete"):
        inplace_ttt.from_pretrained(tmp_path)
