"""transformers' Auto classes read a converted model's folder (this package imported): the base
architecture's own class, converted, computing exactly what the saved model computed."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import inplace_ttt
from inplace_ttt.families.hf import InPlaceTTTConfig
from tests.tiny_hf import FAMILIES, converted, left_padded, logits


def ttt_params(model):
    return {n: p for n, p in model.named_parameters() if ".ttt." in n}


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_model_is_the_saved_model(tmp_path, family):
    model = converted(family)
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), InPlaceTTTConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(model)  # the base architecture's class (MistralForCausalLM with its sliding window, ...)
    assert loaded.config.model_type == model.config.model_type and loaded.config.inplace_ttt == model.config.inplace_ttt
    assert getattr(loaded.config, "sliding_window", None) == getattr(model.config, "sliding_window", None)
    assert [i for i, _ in inplace_ttt.ttt_layers(loaded)] == [i for i, _ in inplace_ttt.ttt_layers(model)]
    for name, p in ttt_params(model).items():
        assert torch.equal(ttt_params(loaded)[name], p), name
    ids, mask = left_padded([13, 9], 13)  # past the sliding window and several chunks
    # bit-exact: the same weights, the same classes, the same float32 kernels on the same machine
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))
    assert torch.equal(logits(loaded, ids, mask), logits(inplace_ttt.from_pretrained(tmp_path), ids, mask))


def test_dtype_device_map_and_attention_are_honoured(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path)
    for device_map in ("cpu", "auto"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map=device_map, attn_implementation="eager")
        assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
        assert loaded.config._attn_implementation == "eager" and {p.device.type for p in loaded.parameters()} == {"cpu"}
        for name, p in ttt_params(model).items():
            assert torch.equal(ttt_params(loaded)[name], p.to(torch.bfloat16)), name
    ids, mask = left_padded([11, 6], 11)
    frequencies = dict(model.model.rotary_emb.named_buffers())  # a bfloat16 load keeps them in float32; a cast model would not
    reference = model.to(torch.bfloat16)
    for name, buffer in frequencies.items():
        setattr(reference.model.rotary_emb, name, buffer)
    reference.set_attn_implementation("eager")
    assert torch.equal(logits(loaded, ids, mask), logits(reference, ids, mask))


def test_a_config_read_by_auto_config_is_the_one_used(tmp_path):
    """What `pipeline` and others do: read the config, change it perhaps, pass it with the folder."""
    converted().save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    config.inplace_ttt["ttt_lr"] = 0.125
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, config=config)
    assert {layer.ttt_lr for _, layer in inplace_ttt.ttt_layers(loaded)} == {0.125}
    clipped = AutoModelForCausalLM.from_pretrained(tmp_path, clip_tau=1e-5)
    assert {layer.clip_tau for _, layer in inplace_ttt.ttt_layers(clipped)} == {1e-5}


def test_auto_config_saves_a_folder_auto_classes_read(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path / "a")
    AutoConfig.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "modeling_inplace_ttt.py").read_text() == (tmp_path / "a" / "modeling_inplace_ttt.py").read_text()
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "b"))
    assert type(fresh) is type(model) and [i for i, _ in inplace_ttt.ttt_layers(fresh)] == [0, 2]
    assert all(not layer.ttt.conv_weight.any() for _, layer in inplace_ttt.ttt_layers(fresh))  # the warm start: TTT adds nothing yet
