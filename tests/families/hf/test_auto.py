"""transformers' Auto classes read a converted model's folder (this package imported): the base
architecture's own class, converted, computing exactly what the saved model computed."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import inplace_ttt
from inplace_ttt.families.hf import InPlaceTTTConfig
from tests.tiny_hf import FAMILIES, converted, left_padded, logits, tiny


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


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_the_authors_format_loads_converted_and_plain_folders_stay_plain(tmp_path, family):
    model = converted(family)
    inplace_ttt.export_release(model, tmp_path / "release")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "release")
    assert type(loaded) is type(model) and [i for i, _ in inplace_ttt.ttt_layers(loaded)] == [0, 2]
    ids, mask = left_padded([13, 9], 13)
    assert torch.equal(logits(loaded, ids, mask), logits(model, ids, mask))
    config = json.loads((tmp_path / "release" / "config.json").read_text())
    (tmp_path / "release" / "config.json").write_text(json.dumps({**config, "ttt_mode": False}))  # their model runs it without TTT: so does this
    assert not inplace_ttt.families.hf.is_converted(AutoModelForCausalLM.from_pretrained(tmp_path / "release"))
    plain = tiny(family)
    plain.save_pretrained(tmp_path / "plain")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert type(again) is type(plain) and not inplace_ttt.families.hf.is_converted(again)
    assert torch.equal(logits(again, ids, mask), logits(plain, ids, mask))


def test_a_plain_folder_with_its_own_code_still_runs_it(tmp_path, monkeypatch):
    """The release's families are mapped to a class of ours: a llama folder that names its own model
    class (``auto_map``) must still get it with trust_remote_code, as without this package."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # transformers copies the code there
    monkeypatch.setattr(sys, "path", list(sys.path))
    tiny("llama").save_pretrained(tmp_path)
    (tmp_path / "my_llama.py").write_text("from transformers import LlamaForCausalLM\n\n\nclass MyLlama(LlamaForCausalLM):\n    pass\n")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "my_llama.MyLlama"}}))
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)).__name__ == "MyLlama"
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False)).__name__ == "LlamaForCausalLM"


def test_a_peft_adapter_on_a_converted_folder_loads_back(tmp_path):
    """A PEFT user's round trip on our folder: LoRA (and the TTT parameters as `modules_to_save`),
    the adapter saved alone, then `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)`."""
    from peft import LoraConfig, PeftModel, get_peft_model

    converted().save_pretrained(tmp_path / "base")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], modules_to_save=["ttt"])
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # as after training: every adapter weight and TTT parameter moved
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(tmp_path / "adapter")
    ids, mask = left_padded([13, 9], 13)
    trained = logits(model, ids, mask)
    assert not torch.allclose(trained, logits(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ids, mask))
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert torch.equal(logits(again, ids, mask), trained)


def test_pipeline_gives_each_prompt_of_a_left_padded_batch_what_it_gives_it_alone(tmp_path):
    """Prompts of different lengths batched (left-padded, several TTT chunks): padding must not reach the fast weights."""
    from transformers import pipeline

    from tests.tiny_hf import tiny_tokenizer

    words = [f"w{i}" for i in range(90)]
    model = converted()
    with torch.no_grad():  # a pad token with an embedding of its own (eos often pads): zero rows would hide a leak
        model.model.embed_tokens.weight[0].normal_(generator=torch.Generator().manual_seed(3))
    model.save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer(words)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path)
    generate = pipeline("text-generation", model=str(tmp_path))
    assert inplace_ttt.families.hf.is_converted(generate.model)
    g = torch.Generator().manual_seed(0)
    prompts = [" ".join(words[j] for j in torch.randint(0, len(words), (n,), generator=g).tolist()) for n in (3, 14, 7, 11)]
    greedy = dict(max_new_tokens=10, do_sample=False, return_full_text=False)
    batched = [out[0]["generated_text"] for out in generate(prompts, batch_size=4, **greedy)]
    alone = [generate(p, **greedy)[0]["generated_text"] for p in prompts]
    assert batched == alone
    base = tiny()
    base.model.embed_tokens.weight.data.copy_(model.model.embed_tokens.weight)
    plain = pipeline("text-generation", model=base, tokenizer=tokenizer)  # the same weights without TTT continue otherwise
    assert [plain(p, **greedy)[0]["generated_text"] for p in prompts] != alone
