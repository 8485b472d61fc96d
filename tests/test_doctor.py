"""`doctor` passes a healthy model and names each failure mode of the seed system when injected."""

import copy

import pytest
import torch
import torch.nn as nn

import inplace_ttt
from inplace_ttt.doctor import doctor
from tests.conftest import perturb_targets
from tests.tiny_hf import VOCAB, converted, tiny, ttt_config


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


def test_random_targets_at_a_fresh_start_are_named_without_the_base_model():
    """The seed's "small random" target start broke the warm start (loss 18 instead of 2-3): a fresh
    conversion's logits must not move when TTT is switched off, no base model needed."""
    model, _ = fresh()
    for _, layer in inplace_ttt.ttt_layers(model):
        perturb_targets(layer, conv_std=0.02, target_std=0.02)
    c = check(doctor(model, batch(), fresh=True), "warm start")
    assert not c.ok and "are the targets initialised at random?" in c.detail
    assert "warm start" not in [c.name for c in doctor(model, batch()).checks]  # trained-looking targets: no claim to check


def test_clipping_in_training_is_named():
    model, _ = fresh()
    inplace_ttt.set_clip_tau(model, 1e-5)
    c = check(doctor(model, batch()), "no clipping in training")
    assert not c.ok and "starves TTT of gradient" in c.detail
    assert check(doctor(model, batch(), training=False), "no clipping in training").ok


def test_inference_clipping_that_removes_nearly_all_of_the_update_is_a_warning():
    model = converted().eval()
    inplace_ttt.set_clip_tau(model, 1e-9)
    report = doctor(model, batch(), training=False)
    kept = check(report, "clipping keeps the updates")
    assert report.ok and kept.warning, str(report)
    assert "TTT is effectively off" in kept.detail and "clip factor mean" in kept.detail
    inplace_ttt.set_clip_tau(model, 1e6)
    kept = check(doctor(model, batch(), training=False), "clipping keeps the updates")
    assert not kept.warning and "clip factor mean 1 " in kept.detail, kept.detail
    inplace_ttt.set_clip_tau(model, None)
    assert not [c for c in doctor(model, batch(), training=False).checks if c.name == "clipping keeps the updates"]


STATE = "TTT neither inert nor harmful"


@pytest.mark.parametrize(
    "lr, steps, said",
    [(1e-9, 8, "TTT is inert after 8 steps (projected)"), (1e-2, 100, None), (10.0, 100, None)],  # a projection never says harmful
)
def test_the_first_batch_doctor_projects_whether_a_fresh_run_stays_inert(lr, steps, said):
    """A fresh conversion's fast weights are zero: the run's TTT learning rate and steps say how far they can get."""
    model, base = fresh()
    opt = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if ".ttt." in n], "lr": lr}])
    state = check(doctor(model, batch(), base, optimizer=opt, steps=steps), STATE)
    assert state.warning == (said is not None), state.detail
    if said:
        assert state.detail.startswith(said) and "train.ttt_params_learning_rate (now 1e-09)" in state.detail
    else:
        assert state.detail.startswith(f"projected after {steps} steps")
    assert all(not p.grad_fn for p in model.parameters())  # the parameters are back as they were
    assert not any(p.abs().sum() for n, p in model.named_parameters() if "conv_weight" in n)


def test_a_trained_model_whose_fast_weights_blow_up_is_named_harmful():
    model = converted(ttt_lr=1000.0).train()
    state = check(doctor(model, batch(), tiny()), STATE)
    assert state.warning and state.detail.startswith("TTT is harmful on this batch") and "ttt.ttt_lr (now 1000)" in state.detail
    healthy = check(doctor(converted().train(), batch(), tiny()), STATE)
    assert not healthy.warning and "loss" in healthy.detail, healthy.detail


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


def test_one_group_holding_the_gradient_is_a_warning_with_its_share():
    model, _ = fresh()
    report = doctor(model, batch())
    c = check(report, "gradient balance")
    grads = torch.autograd.grad(model(input_ids=batch(), labels=batch()).loss, [p for p in model.parameters()])
    squares = {True: 0.0, False: 0.0}  # an independent sum over every parameter's gradient
    for (name, _), g in zip(model.named_parameters(), grads):
        squares[".ttt." in name] += float(g.pow(2).sum())
    share = squares[True] / (squares[True] + squares[False])
    assert c.ok and f"{share:.1%}" in c.detail
    assert c.warning == (share > 0.9) and ("WARN  gradient balance" in str(report)) == (share > 0.9)
    assert report.ok  # a warning does not fail the run
    # a run that clips the TTT parameters as their own group is told the same share, without the warning
    apart = check(doctor(model, batch(), ttt_params_max_grad_norm=1.0), "gradient balance")
    assert apart.ok and not apart.warning and f"{share:.1%}" in apart.detail and "own group" in apart.detail


# Moshi: the same checks on a moshi LMModel, each failure mode of the seed injected ---------------


@pytest.fixture
def moshi():
    pytest.importorskip("moshi")
    from tests.tiny_moshi import random_codes, tiny_lm

    base = tiny_lm()
    lm = inplace_ttt.convert(tiny_lm(), inplace_ttt.TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings")).train()
    codes = random_codes(base, 2, 16)
    return lm, base, {"codes": codes}


def test_a_fresh_moshi_conversion_passes_everything(moshi):
    lm, base, codes = moshi
    report = doctor(lm, codes, base, optimizer=torch.optim.AdamW(lm.parameters()))
    assert report.ok, str(report)
    assert "0.0e+00 with TTT" in check(report, "warm start").detail
    assert "changing a later step moves earlier logits by 0.0e+00" in check(report, "causality").detail


def _moshi_layers(lm):
    return dict(inplace_ttt.ttt_layers(lm))


def _gelu(lm):  # the seed's TTT layers ran GELU in Moshi's SiLU gatings
    _moshi_layers(lm)[0].activation = nn.GELU()


def _clip(lm):  # the seed clipped at 1e-5 in training
    for layer in _moshi_layers(lm).values():
        layer.config.clip_tau = 1e-5


def _zero_targets(lm):
    with torch.no_grad():
        for layer in _moshi_layers(lm).values():
            layer.ttt.target_weight.zero_()


def _freeze(lm):
    _moshi_layers(lm)[2].ttt.conv_weight.requires_grad_(False)


def _overwrite_pretrained(lm):  # the seed's per-document reset copied over the trainable down projection
    with torch.no_grad():
        _moshi_layers(lm)[0].linear_out.weight.mul_(1.5)


def _random_targets(lm):  # the seed's "small random" start of both target factors
    for layer in _moshi_layers(lm).values():
        perturb_targets(layer, conv_std=0.02, target_std=0.02)


def _leak(lm):
    layer = _moshi_layers(lm)[2]
    real = layer.forward
    layer.forward = lambda x: real(x) + x.mean(1, keepdim=True)  # every step sees the whole row


# the injection; the checks that fail with the unconverted model at hand, and without it (a fresh
# conversion with TTT off is the unconverted model); words the failing checks use
SEED_FAILURES = {
    "GELU in a SiLU gating": (_gelu, ["activation matches the original MLP", "warm start"], [], "GELU vs silu"),
    "clipping in training": (_clip, ["no clipping in training"], ["no clipping in training"], "starves TTT of gradient"),
    "both target factors zero": (_zero_targets, ["TTT gradients"], ["TTT gradients"], "both conv and W_target are zero"),
    "a frozen TTT parameter": (_freeze, ["TTT params trainable", "TTT gradients"], ["TTT params trainable", "TTT gradients"], "layer 2 conv_weight"),
    "pretrained weights overwritten": (_overwrite_pretrained, ["warm start", "frozen weights unchanged"], [], "transformer.layers.0.gating.linear_out.weight"),
    "a leak from the future": (_leak, ["causality", "warm start"], ["causality"], "moves earlier logits"),
    "random targets at the start": (_random_targets, ["warm start"], ["warm start"], "a freshly converted model must compute what the base model did"),
}


@pytest.mark.parametrize("case", SEED_FAILURES)
def test_each_failure_of_the_seed_is_named_on_a_moshi_model(moshi, case):
    lm, base, codes = moshi
    inject, with_base, without_base, words = SEED_FAILURES[case]
    inject(lm)
    for reference, failing in ((base, with_base), (None, without_base)):
        report = doctor(lm, codes, reference, fresh=True)
        assert sorted(report.failed()) == sorted(failing), str(report)
        if failing:
            assert any(words in c.detail for c in report.checks if not c.ok), str(report)


def test_short_and_padded_moshi_rows_are_named(moshi):
    lm, _, codes = moshi
    short = {"codes": codes["codes"][:, :, :6]}  # one and a half chunks of 4
    assert check(doctor(lm, short), "sequences span 2+ chunks").detail.startswith("longest document 6 tokens")
    padded = codes["codes"].clone()
    padded[:, :, 7:] = -1  # steps with every stream missing are padding, not part of the conversation
    c = check(doctor(lm, {"codes": padded}), "sequences span 2+ chunks")
    assert not c.ok and c.detail.startswith("longest document 7 tokens")


def test_lora_wrapped_and_unoptimised_moshi_targets_are_named(moshi):
    from peft import LoraConfig, get_peft_model

    lm, _, codes = moshi
    opt = torch.optim.AdamW([p for n, p in lm.named_parameters() if ".ttt." not in n])
    c = check(doctor(lm, codes, optimizer=opt), "TTT params in optimizer")
    assert not c.ok and "layer 0 conv_weight" in c.detail
    wrapped = get_peft_model(lm, LoraConfig(r=2, target_parameters=["ttt.target_weight"]))
    c = check(doctor(wrapped.base_model.model, codes), "TTT params not LoRA-wrapped")
    assert not c.ok and "layer 0" in c.detail


def test_the_package_exports_the_doctor_function():
    import inplace_ttt.doctor as by_attribute  # `import a.b as c` reads the attribute: the function
    from inplace_ttt.doctor import Report
    from inplace_ttt.doctor import doctor as from_module

    assert inplace_ttt.doctor is from_module is by_attribute and callable(inplace_ttt.doctor)
    model, base = fresh()
    report = inplace_ttt.doctor(model, batch(), base)
    assert isinstance(report, Report) and report.ok
