"""One `Family` protocol: each family defines one, `family_of` finds a model's, and the top-level
functions, which call only the protocol, work the same for both families."""

import dataclasses
import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import inplace_ttt
from inplace_ttt.families import Family, family_of
from inplace_ttt.families.hf import FAMILY as HF
from inplace_ttt.families.hf import from_pretrained
from tests.tiny_hf import converted, tiny

pytest.importorskip("moshi")
from moshi.models.lm import LMGen  # noqa: E402

from inplace_ttt.families.moshi import FAMILY as MOSHI  # noqa: E402
from inplace_ttt.families.moshi import load_moshi, save_ttt  # noqa: E402
from tests.tiny_moshi import TINY, active_targets, random_codes, tiny_lm  # noqa: E402


def moshi_model():
    lm = inplace_ttt.convert(tiny_lm(), inplace_ttt.TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    return lm


def test_each_family_fills_every_field_of_the_protocol():
    for family in (HF, MOSHI):
        assert isinstance(family, Family)
        assert all(getattr(family, f.name) is not None for f in dataclasses.fields(Family)), family.name


def test_the_right_family_is_picked_and_the_top_level_functions_call_it():
    assert family_of(converted()) is HF and family_of(tiny()) is HF
    assert family_of(moshi_model()) is MOSHI and family_of(tiny_lm()) is MOSHI
    calls = []
    spy = dataclasses.replace(HF, ttt_layers=lambda model: calls.append(model) or HF.ttt_layers(model))
    model = converted()
    from inplace_ttt import families

    original = families.family_of
    families.family_of = lambda m: spy
    try:
        inplace_ttt.set_clip_tau(model, 1e-3)
    finally:
        families.family_of = original
    assert calls == [model]  # the generic function went through the family's protocol


@pytest.mark.parametrize("family", ["transformers", "moshi"])
def test_clip_tau_works_the_same_for_both_families_and_travels_with_save(family, tmp_path):
    model = converted() if family == "transformers" else moshi_model()
    assert inplace_ttt.set_clip_tau(model, 1e-3) is None
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(model)) and family_of(model).settings(model)["clip_tau"] == 1e-3
    with inplace_ttt.clip_tau(model, 5e-6):
        assert all(layer.clip_tau == 5e-6 for _, layer in inplace_ttt.ttt_layers(model))
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(model))  # restored
    with pytest.raises(ValueError, match="clip_tau must be None or a finite number > 0"):
        inplace_ttt.set_clip_tau(model, -1.0)
    if family == "transformers":
        model.save_pretrained(tmp_path / "saved")
        again = from_pretrained(tmp_path / "saved", dtype=torch.float32)
    else:
        save_ttt(model, tmp_path / "saved")
        again = load_moshi(tmp_path / "saved" / "model.safetensors", TINY, ttt_file=tmp_path / "saved" / "ttt.safetensors", dtype=torch.float32)
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(again))


def test_a_models_settings_have_one_home_shared_by_its_layers():
    """One `TTTConfig` per converted model: a change reaches every layer, and a second model
    converted from the same settings object keeps its own."""
    config = inplace_ttt.TTTConfig(layers="every 2", chunk_size=4)
    a, b = inplace_ttt.convert(tiny(), config), inplace_ttt.convert(tiny(), config)
    (_, first), (_, second) = inplace_ttt.ttt_layers(a)
    assert first.config is second.config and first.config is not config
    inplace_ttt.set_clip_tau(a, 1e-4)
    assert second.clip_tau == 1e-4 and config.clip_tau is None
    assert all(layer.clip_tau is None for _, layer in inplace_ttt.ttt_layers(b))


def test_an_unconverted_moshi_model_is_told_to_convert_first():
    for call in (lambda lm: inplace_ttt.set_clip_tau(lm, 1e-5), lambda lm: inplace_ttt.set_context_parallel(lm, None)):
        with pytest.raises(ValueError, match="convert it first"):
            call(tiny_lm())


@pytest.fixture
def one_rank_group():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1, timeout=timedelta(seconds=60))
        try:
            yield dist.group.WORLD
        finally:
            dist.destroy_process_group()


def test_context_parallel_on_a_moshi_model(one_rank_group):
    """One rank holding the whole sequence: the context-parallel path gives the local forward's
    outputs and gradients; streaming with a group is refused (it runs on one rank)."""
    lm = moshi_model()
    codes = random_codes(lm, 2, 12)
    local = lm(codes).text_logits
    local.nan_to_num(0).sum().backward()
    grads = {n: p.grad.clone() for n, p in lm.named_parameters() if ".ttt." in n}
    lm.zero_grad()
    inplace_ttt.set_context_parallel(lm, one_rank_group)
    assert all(layer.cp_group is one_rank_group for _, layer in inplace_ttt.ttt_layers(lm))
    split = lm(codes).text_logits
    torch.testing.assert_close(split.nan_to_num(0), local.nan_to_num(0), rtol=1e-5, atol=1e-6)
    split.nan_to_num(0).sum().backward()
    for n, g in grads.items():
        torch.testing.assert_close(dict(lm.named_parameters())[n].grad, g, rtol=1e-5, atol=1e-6)
    gen = LMGen(lm, use_sampling=False)
    with gen.streaming(1), pytest.raises(ValueError, match="streaming runs on one rank"):
        gen.step(torch.zeros(1, lm.num_codebooks - lm.dep_q - 1, 1, dtype=torch.long))
    inplace_ttt.set_context_parallel(lm, None)
    assert all(layer.cp_group is None for _, layer in inplace_ttt.ttt_layers(lm))
