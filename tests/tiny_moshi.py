"""Tiny random Moshi `LMModel`s and their codes for tests (nothing is downloaded)."""

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import torch  # noqa: E402
from moshi.models.lm import LMGen, LMModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from inplace_ttt import ttt_layers  # noqa: E402
from inplace_ttt.speech.kit import LM_KWARGS  # noqa: E402
from tests.conftest import perturb_targets  # noqa: E402

TINY = {**LM_KWARGS, "card": 32, "text_card": 48}  # `ittt moshi-kit`'s LMModel, with other vocabularies


def tiny_lm(seed: int = 0) -> LMModel:
    torch.manual_seed(seed)
    return LMModel(**TINY, dtype=torch.float32).eval()


def random_codes(lm: LMModel, B: int, T: int) -> torch.Tensor:
    codes = torch.randint(0, lm.card, (B, lm.num_codebooks, T))
    codes[:, 0] = torch.randint(0, lm.text_card, (B, T))
    return codes


def active_targets(lm: LMModel, scale: float = 0.5) -> None:
    """Give the target generators non-zero weights, as training would, so that updates change outputs
    (the convolution, or `W_target`, scaled to its width, where the convolution is ablated)."""
    for _, layer in ttt_layers(lm):
        width = layer.down.weight.shape[0]
        perturb_targets(layer, conv_std=scale, target_std=0.0 if layer.ttt.conv_weight is not None else scale / width**0.5)


def logits(lm: LMModel, codes: torch.Tensor, conditions=None) -> tuple[torch.Tensor, torch.Tensor]:
    out = lm(codes, conditions)
    return out.text_logits.nan_to_num(0), out.logits.nan_to_num(0)  # NaN marks positions the delays leave empty


def stream(gen: LMGen, user: torch.Tensor, forced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LMGen step by step (greedy text, the model's audio forced): `(text logits [B, T, card], text tokens [B, T])`."""
    seen, texts = [], []
    gen.on_text_logits_hook = lambda x: seen.append(x.clone())
    gen.on_text_hook = lambda x: texts.append(x.clone())
    for t in range(user.shape[-1]):
        gen.step(user[:, :, t : t + 1], depformer_replace_tokens=forced[:, :, t : t + 1])
    return torch.cat(seen, 2)[:, 0], torch.stack(texts, 1)


def codes_of_stream(lm: LMModel, texts, user, forced) -> torch.Tensor:
    """The codes `[B, K, T]` whose parallel forward sees what LMGen fed: the model's codebook k at
    step t is the code at time ``t - delay_k``; the user's input at step t the code at time ``t - 1``.
    Codes that only later steps would read are random."""
    B, T = texts.shape
    codes = random_codes(lm, B, T)
    codes[:, 0] = texts
    for k in range(1, lm.dep_q + 1):
        d = lm.delays[k]
        codes[:, k, : T - d] = forced[:, k - 1, d:]
    codes[:, lm.dep_q + 1 :, : T - 1] = user[:, :, 1:]
    return codes


def stream_inputs(lm: LMModel, B: int, T: int):
    user = torch.randint(0, lm.card, (B, lm.num_codebooks - lm.dep_q - 1, T))
    forced = torch.randint(0, lm.card, (B, lm.dep_q, T))
    return user, forced


def write_tiny_checkpoint(path, seed=0) -> LMModel:
    """A tiny LMModel's weights in the layout `get_moshi_lm` reads (one safetensors state dict)."""
    lm = tiny_lm(seed)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(path))
    return lm


def hub_snapshot(cache, repo: str, files: dict, config: dict):
    """A repo snapshot in huggingface_hub's cache at `cache` (what HF_HUB_CACHE names), as a download
    leaves it: ``refs/main`` naming a commit whose folder holds `files` (name -> bytes, or a path
    to copy) and moshi's ``config.json`` (`config`). Returns the snapshot's folder."""
    import json
    import shutil
    from pathlib import Path

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, content in files.items():
        if isinstance(content, bytes):
            (snapshot / name).write_bytes(content)
        else:
            shutil.copyfile(content, snapshot / name)
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot
