"""`doctor` passes a healthy model and names each failure mode of the seed system when injected."""

import copy

import pytest
import torch
import torch.nn as nn

import inplace_ttt
from inplace_ttt.doctor import doctor
from tests.tiny_hf import VOCAB, converted, tiny, tiny_tokenizer, ttt_config


def batch(length=16, rows=2):
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(0))


def fresh():
    base = tiny()
    return inplace_ttt.convert(copy.deepcopy(base), ttt_config()).train(), base


def check(report, name):
    return next(c for c in report.checks if c.name == name)


def test_a_fresh_conversion_passes_everything():
    model, base = fresh()
    opt = torch.optim.AdamW(model.parameters())
    report = doctor(model, batch(), base, optimizer=opt)
    assert report.ok, str(report)
    assert "0.0e+00 with TTT" in check(report, "warm start").detail
    assert "float32" in check(report, "fast-weight sum precision").detail
    assert str(report).endswith("all checks passed")


@pytest.mark.parametrize("variant", [{"target_init": "diagonal"}, {"target_conv": False}, {"target_projection": False}])
def test_a_fresh_conversion_of_each_target_variant_passes(variant):
    base = tiny()
    model = inplace_ttt.convert(copy.deepcopy(base), ttt_config(**variant)).train()
    report = doctor(model, batch(), base, optimizer=torch.optim.AdamW(model.parameters()))
    assert report.ok, str(report)
    assert "0.0e+00 with TTT" in check(report, "warm start").detail


def test_a_trained_model_passes_against_its_base():
    model = converted().train()
    report = doctor(model, batch(), tiny())
    assert report.ok, str(report)


def test_both_factors_zero_is_named():
    model, _ = fresh()
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(model):
            layer.ttt.target_weight.zero_()
    c = check(doctor(model, batch()), "TTT gradients")
    assert not c.ok and "both conv and W_target are zero" in c.detail


def test_clipping_in_training_is_named():
    model, _ = fresh()
    inplace_ttt.set_clip_tau(model, 1e-5)
    c = check(doctor(model, batch()), "no clipping in training")
    assert not c.ok and "starves TTT of gradient" in c.detail
    assert check(doctor(model, batch(), training=False), "no clipping in training").ok


def test_single_chunk_sequences_are_named():
    model, _ = fresh()
    report = doctor(model, batch(length=4))
    c = check(report, "sequences span 2+ chunks")
    assert not c.ok and "TTT is inert" in c.detail
    assert not check(report, "TTT gradients").ok  # and indeed nothing reaches the targets


def test_packed_short_documents_count_as_short():
    model, _ = fresh()
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]])
    c = check(doctor(model, {"input_ids": batch(12, 1), "position_ids": pos}), "sequences span 2+ chunks")
    assert not c.ok and "longest document 6 tokens" in c.detail


def test_frozen_target_parameters_are_named():
    model, _ = fresh()
    layer = dict(inplace_ttt.ttt_layers(model))[2]
    layer.ttt.conv_weight.requires_grad_(False)
    c = check(doctor(model, batch()), "TTT params trainable")
    assert not c.ok and "layer 2 conv_weight" in c.detail


def test_peft_freezing_the_targets_is_named():
    from peft import LoraConfig, get_peft_model

    model, _ = fresh()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    c = check(doctor(peft_model.base_model.model, batch()), "TTT params trainable")
    assert not c.ok and "layer 0 conv_weight" in c.detail


def test_lora_wrapped_targets_are_named():
    from peft import LoraConfig, get_peft_model

    model, _ = fresh()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_parameters=["ttt.target_weight"]))
    c = check(doctor(peft_model.base_model.model, batch()), "TTT params not LoRA-wrapped")
    assert not c.ok and "layer 0" in c.detail


def test_parameters_missing_from_the_optimizer_are_named():
    model, _ = fresh()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if ".ttt." not in n])
    c = check(doctor(model, batch(), optimizer=opt), "TTT params in optimizer")
    assert not c.ok and "layer 0 conv_weight" in c.detail


def test_a_wrong_activation_is_named():
    model, base = fresh()
    dict(inplace_ttt.ttt_layers(model))[0].act_fn = nn.GELU()  # the seed's mistake
    report = doctor(model, batch(), base)
    assert not check(report, "activation matches the original MLP").ok
    assert not check(report, "warm start").ok


def test_a_leak_from_the_future_is_named():
    model, _ = fresh()
    layer = dict(inplace_ttt.ttt_layers(model))[0]
    real = layer.forward

    def leaky(x, **kw):  # every token sees the sequence mean
        return real(x, **kw) + x.mean(1, keepdim=True)

    layer.forward = leaky
    assert not check(doctor(model, batch()), "causality").ok


def test_cli_doctor(tmp_path, capsys):
    from inplace_ttt.cli import main

    words = [f"w{i}" for i in range(VOCAB - 4)]
    model, base = fresh()
    model.save_pretrained(tmp_path / "ttt")
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer(words).save_pretrained(tmp_path / "ttt")
    data = tmp_path / "data.txt"
    data.write_text(" ".join(words[i % len(words)] for i in range(200)))
    assert main(["doctor", str(tmp_path / "ttt"), "--data", str(data), "--base", str(tmp_path / "base")]) == 0
    out = capsys.readouterr().out
    assert "PASS  warm start" in out and "all checks passed" in out
    # a broken one exits non-zero and says why
    broken = inplace_ttt.from_pretrained(tmp_path / "ttt")
    inplace_ttt.set_clip_tau(broken, 1e-5)
    broken.save_pretrained(tmp_path / "clipped")
    tiny_tokenizer(words).save_pretrained(tmp_path / "clipped")
    assert main(["doctor", str(tmp_path / "clipped"), "--data", str(data)]) == 1
    assert "FAIL  no clipping in training" in capsys.readouterr().out
