"""moshi-finetune's training loss, the module the engine trains with it (`MoshiLoss`), and what of it
that loss never reaches (`unreached_parameters`)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def weighted_cross_entropy(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * CE) / sum(w)`` over positions with ``w > 0`` (`logits` ``[..., V]``)."""
    keep = weights > 0
    ce = F.cross_entropy(logits[keep].float(), target[keep], reduction="none")
    return (ce * weights[keep]).sum() / weights[keep].sum().clamp(min=1e-12)


def training_loss(lm: nn.Module, codes: Tensor, first_codebook_weight: float = 1.0, text_padding_weight: float = 1.0) -> dict[str, Tensor]:
    """moshi-finetune's loss on `codes` ``[B, K, T]``: the text stream's cross-entropy plus the
    model's audio codebooks', each a weighted mean over the valid positions (`LMOutput`'s masks),
    the first audio codebook weighted by `first_codebook_weight` and text padding tokens by
    `text_padding_weight`. Returns ``loss``, ``text_loss`` and ``audio_loss``."""
    out = lm(codes)
    text_target = codes[:, : lm.audio_offset]
    text_w = out.text_mask.float()
    padding = (text_target == lm.text_padding_token_id) | (text_target == lm.end_of_text_padding_id)
    text_w = torch.where(padding, text_w * text_padding_weight, text_w)
    audio_target = codes[:, lm.audio_offset : lm.audio_offset + lm.dep_q]
    audio_w = out.mask.float()
    audio_w[:, 0] *= first_codebook_weight
    text = weighted_cross_entropy(out.text_logits, text_target, text_w)
    audio = weighted_cross_entropy(out.logits, audio_target, audio_w)
    return {"loss": text + audio, "text_loss": text.detach(), "audio_loss": audio.detach()}


class MoshiLoss(nn.Module):
    """An `LMModel` whose forward is its training loss: ``forward(codes)`` returns moshi-finetune's
    weighted loss with its text and audio parts (what the Trainer needs of a model)."""

    def __init__(self, lm: nn.Module, first_codebook_weight: float, text_padding_weight: float):
        super().__init__()
        self.lm = lm
        self.first_codebook_weight = first_codebook_weight
        self.text_padding_weight = text_padding_weight

    def forward(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        return training_loss(self.lm, codes, self.first_codebook_weight, self.text_padding_weight)


def unreached_parameters(module: nn.Module) -> list[str]:
    """The trainable parameters of a `MoshiLoss` (wrapped or not, by PEFT say) that its loss never
    reaches: `LMModel.forward` runs every submodule but the extra heads (read by `LMGen`'s
    ``step_with_extra_heads`` alone). Several processes need to know (DDP waits for a gradient of
    every trainable parameter unless told to look for unused ones, which costs a graph traversal a step)."""
    return [name for name, p in module.named_parameters() if p.requires_grad and "lm.extra_heads." in name]
