"""One adapter protocol: both families' modules provide it, and the top-level functions work the same for both."""

import inspect
import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import inplace_ttt
from inplace_ttt.adapters import adapter_of, hf
from inplace_ttt.adapters.protocol import Adapter
from tests.tiny_hf import converted

pytest.importorskip("moshi")
from moshi.models.lm import LMGen  # noqa: E402

from inplace_ttt.adapters import moshi  # noqa: E402
from tests.adapters.test_moshi import TINY, active_targets, random_codes, tiny_lm  # noqa: E402

PROTOCOL = [name for name in vars(Adapter) if not name.startswith("_")]


@pytest.mark.parametrize("module", [hf, moshi], ids=["transformers", "moshi"])
def test_both_adapters_provide_the_protocol(module):
    def positional(function, skip_self=False):
        params = list(inspect.signature(function).parameters.values())[1 if skip_self else 0 :]
        return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)

    for name in PROTOCOL:
        assert hasattr(module, name), name
        if inspect.isfunction(getattr(Adapter, name)):  # the same required positional arguments
            assert positional(getattr(module, name)) == positional(getattr(Adapter, name), skip_self=True), name


def moshi_model():
    lm = inplace_ttt.convert(tiny_lm(), inplace_ttt.TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings"))
    active_targets(lm)
    return lm


def test_the_right_adapter_is_picked():
    assert adapter_of(converted()) is hf and adapter_of(moshi_model()) is moshi


@pytest.mark.parametrize("family", ["transformers", "moshi"])
def test_clip_tau_works_the_same_for_both_families_and_travels_with_save(family, tmp_path):
    model = converted() if family == "transformers" else moshi_model()
    adapter = adapter_of(model)
    assert inplace_ttt.set_clip_tau(model, 1e-3) is None
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(model)) and adapter.settings(model)["clip_tau"] == 1e-3
    with inplace_ttt.clip_tau(model, 5e-6):
        assert all(layer.clip_tau == 5e-6 for _, layer in inplace_ttt.ttt_layers(model))
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(model))  # restored
    with pytest.raises(ValueError, match="clip_tau must be None or a finite number > 0"):
        inplace_ttt.set_clip_tau(model, -1.0)
    adapter.save(model, tmp_path / "saved")
    options = {"dtype": torch.float32} if family == "transformers" else {"lm_kwargs": TINY, "dtype": torch.float32}
    again = adapter.load(tmp_path / "saved", **options)
    assert all(layer.clip_tau == 1e-3 for _, layer in inplace_ttt.ttt_layers(again))


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
