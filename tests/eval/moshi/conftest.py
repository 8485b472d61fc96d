"""`ittt moshi-eval`'s test kit: tiny Moshi models (plain, converted, trained-like) saved as the
command reads them, and held-out conversations of random codes."""

import json

import pytest
import torch

pytest.importorskip("moshi")
from safetensors.torch import save_file  # noqa: E402

from inplace_ttt import TTTConfig, convert  # noqa: E402
from inplace_ttt.families.moshi import save_ttt  # noqa: E402
from tests.speech.conftest import single_thread  # noqa: E402
from tests.tiny_moshi import TINY, active_targets, random_codes, tiny_lm, write_tiny_checkpoint  # noqa: E402  (sets NO_TORCH_COMPILE)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def ttt_lm():
    """A converted tiny LMModel whose target generators change its outputs, as a trained one's would."""
    lm = convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=8, target_source="token_embeddings"))
    active_targets(lm)
    return lm


def write_models(root):
    """In `root`: ``model.safetensors`` and ``lm.json`` (the tiny base), ``fresh/`` (converted,
    untrained) and ``trained/`` (`ttt_lm`) TTT files, and ``held-out/`` with two conversations of
    150 and 75 steps; returns that folder and the conversations' codes."""
    write_tiny_checkpoint(root / "model.safetensors")
    (root / "lm.json").write_text(json.dumps(TINY))
    save_ttt(convert(tiny_lm(), TTTConfig(layers=[0, 2], chunk_size=8, target_source="token_embeddings")), root / "fresh")  # untrained: the base model exactly
    save_ttt(ttt_lm(), root / "trained")
    data = root / "held-out"
    data.mkdir()
    conversations = [random_codes(tiny_lm(), 1, T)[0] for T in (150, 75)]
    for i, codes in enumerate(conversations):
        save_file({"codes": codes.to(torch.int32)}, str(data / f"conv{i}.safetensors"))
    return data, conversations
