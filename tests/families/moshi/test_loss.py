"""What moshi-finetune's loss reaches: every trainable parameter of a `MoshiLoss` gets a gradient but
those `unreached_parameters` names, in every training mode (checked by a real backward)."""

import pytest
import torch

pytest.importorskip("moshi")
from moshi.models.lm import LMModel  # noqa: E402

from inplace_ttt import TTTConfig, convert, ttt_layers  # noqa: E402
from inplace_ttt.families.moshi import MoshiLoss, unreached_parameters  # noqa: E402
from inplace_ttt.train.config import LoraSettings  # noqa: E402
from inplace_ttt.train.modes import apply_mode  # noqa: E402
from tests.tiny_moshi import TINY, random_codes  # noqa: E402  (sets NO_TORCH_COMPILE)


def without_gradient(module, codes) -> list[str]:
    module(codes)["loss"].backward()
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("extra_heads", [0, 2])
@pytest.mark.parametrize("mode", ["full", "ttt_only", "lora"])
def test_the_parameters_without_a_gradient_are_the_unreached_ones(mode, extra_heads):
    torch.manual_seed(0)
    lm = convert(
        LMModel(**TINY, extra_heads_num_heads=extra_heads, dtype=torch.float32), TTTConfig(layers=[0, 2], chunk_size=4, target_source="token_embeddings")
    )
    module = apply_mode(MoshiLoss(lm, 100.0, 0.5), mode, LoraSettings(r=2, alpha=4, target_modules=["linear_in", "linear_out"]), dict(ttt_layers(lm))).train()
    codes = random_codes(lm, 2, 16)
    codes[1, :, 10:] = -1  # missing values: no loss there, the parameters are still reached
    unreached = unreached_parameters(module)
    assert without_gradient(module, codes) == unreached
    assert len(unreached) == (extra_heads if mode == "full" else 0)  # only a full run trains the extra heads
