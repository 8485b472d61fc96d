"""Moshi's files in and out: moshi's own ``model.safetensors`` (read by its `get_moshi_lm`) beside
our ``ttt.safetensors`` (the TTT parameters, the settings in its metadata). Safetensors only:
moshi's loaders unpickle any other suffix, which must never see a user's file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ...config import CONFIG_KEY as SETTINGS_KEY
from ...config import TTTConfig
from ...files import check_safetensors
from ...finite import require_finite
from ...layer import is_ttt_param
from ..record import TRAINING_KEY, split_training

TTT_WEIGHTS = "ttt.safetensors"  # beside moshi's model.safetensors: our weights and settings
SAFETENSORS = (".safetensors", ".sft", ".sfts")  # the suffixes moshi's loaders read as safetensors (any other they unpickle)


def save_ttt(lm: nn.Module, directory: str | Path) -> Path:
    """Write a converted model as moshi's own files plus ours, in `directory`:

    ``model.safetensors`` (every pretrained-layout weight, trained ones included; moshi's
    `get_moshi_lm` loads it) and ``ttt.safetensors`` (the TTT parameters, with the settings
    in its metadata). Load both with `load_moshi`.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in lm.state_dict().items() if not is_ttt_param(k)}
    save_file(state, str(directory / "model.safetensors.tmp"))
    save_ttt_weights(lm, directory, dict(lm.named_parameters()))
    (directory / "model.safetensors.tmp").replace(directory / "model.safetensors")
    return directory


def save_ttt_weights(lm: nn.Module, directory: str | Path, parameters: dict[str, Tensor]) -> Path:
    """``ttt.safetensors`` alone: the TTT parameters among `parameters` (named as in `lm`, a converted
    model) with `lm`'s settings in its metadata; beside LoRA adapters, say, in place of a whole model."""
    from safetensors.torch import save_file

    from .convert import settings

    saved = settings(lm)
    path = Path(directory) / TTT_WEIGHTS
    ttt = {k: p.detach().contiguous() for k, p in parameters.items() if is_ttt_param(k)}
    save_file(ttt, str(path) + ".tmp", metadata={SETTINGS_KEY: json.dumps(saved)})
    Path(str(path) + ".tmp").replace(path)
    return path


class LMLoadError(ValueError):
    """moshi could not build an `LMModel` from these weights and keyword arguments: the weights do
    not fit the settings (load_state_dict's size mismatches and missing keys), or the settings are
    not LMModel's (an argument it does not take, a key it needs). The message is the first problem
    moshi names; callers say which of their fields to fix."""


def moshi_lm(model_file: str | Path | None, lm_kwargs: dict[str, Any] | None, **kwargs) -> nn.Module:
    """moshi's `get_moshi_lm` (`model_file` None: no weights, as on the meta device), with the errors
    of weights and settings that do not fit raised as `LMLoadError`; any other error (out of memory,
    say) as it was."""
    from moshi.models.loaders import get_moshi_lm

    try:
        return get_moshi_lm(None if model_file is None else str(model_file), lm_kwargs=lm_kwargs, **kwargs)
    except RuntimeError as e:
        if "state_dict" not in str(e):  # not load_state_dict's "the weights do not fit"
            raise
        raise LMLoadError(_first_problem(e)) from None
    except (TypeError, KeyError) as e:  # LMModel's unknown arguments; a key moshi's loader looks up
        raise LMLoadError(_first_problem(e)) from None


def _first_problem(error: BaseException) -> str:
    """The first thing `error` names: load_state_dict's header line names none, the line after it
    does (a size mismatch, the missing keys); long lines are cut."""
    if isinstance(error, KeyError):
        return f"no {error} key"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    problems = lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    first = problems[0] if len(problems[0]) <= 300 else problems[0][:300] + "..."
    return first + more


def load_base(model_file: str | Path, lm_kwargs: dict[str, Any] | None = None, *, device="cpu", dtype=torch.float32) -> nn.Module:
    """An unconverted `LMModel` from moshi's own loader (safetensors only: moshi would unpickle anything else)."""
    require_safetensors(model_file)
    lm = moshi_lm(model_file, lm_kwargs, device=device, dtype=dtype)
    require_finite(lm.state_dict().items(), model_file)
    return lm


def require_safetensors(path: str | Path) -> None:
    """Refuse weights that are not a whole safetensors file: moshi's loaders `torch.load` (unpickle)
    any other suffix, and a file cut short would fail deep inside them."""
    if Path(path).suffix not in SAFETENSORS:
        raise ValueError(
            f"{path} is not a safetensors file ({', '.join(SAFETENSORS)}); only safetensors weights are read (other formats are pickles, never loaded)"
        )
    check_safetensors(path)


def saved_settings(ttt_file: str | Path) -> tuple[TTTConfig, dict | None, list[dict]]:
    """The `TTTConfig`, YaRN settings and training record (`adapters.record`) a
    ``ttt.safetensors`` of `save_ttt` carries."""
    from safetensors import safe_open

    require_safetensors(ttt_file)
    with safe_open(str(ttt_file), framework="pt") as f:
        raw = (f.metadata() or {}).get(SETTINGS_KEY)
    if raw is None:
        raise ValueError(f"{ttt_file} holds no In-Place TTT settings (metadata key '{SETTINGS_KEY}'): not written by save_ttt")
    settings, training = split_training(json.loads(raw))
    rope_scaling = settings.pop("rope_scaling", None)  # not a TTTConfig field
    return TTTConfig.from_dict(settings), rope_scaling, training


def load_moshi(
    model_file: str | Path,
    lm_kwargs: dict[str, Any] | None = None,
    *,
    ttt_file: str | Path | None = None,
    config: TTTConfig | None = None,
    rope_scaling: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    clip_tau: float | None = ...,
    lora_file: str | Path | None = None,
) -> nn.Module:
    """Load a Moshi LM with moshi's `get_moshi_lm` and make it an In-Place TTT model.

    From published files: ``load_moshi(path_to_model_safetensors, config=TTTConfig(...))``
    (`lm_kwargs` defaults to Moshi 7B's, as in moshi). From `save_ttt`'s output: also give
    ``ttt_file`` (its ``ttt.safetensors``): the settings come from it and the trained TTT
    weights are loaded (all must be there). Weights holding a NaN or an infinity are refused by name. `clip_tau` overrides the saved inference clipping,
    `rope_scaling` the saved YaRN settings. `lora_file`: LoRA adapters in moshi's layout (moshi-finetune's
    ``lora.safetensors``; `lm_kwargs` then says ``lora: true`` and their rank and scaling), folded
    into the weights by moshi's loader before the conversion.
    """
    from safetensors.torch import load_file

    from .convert import convert

    require_safetensors(model_file)
    ttt_weights: dict[str, Tensor] = {}
    training: list[dict] = []
    if ttt_file is not None:
        config, saved_rope_scaling, training = saved_settings(ttt_file)
        rope_scaling = saved_rope_scaling if rope_scaling is None else rope_scaling
        ttt_weights = load_file(str(ttt_file))
        require_finite(ttt_weights.items(), ttt_file)
    if config is None:
        raise ValueError("load_moshi: give config=TTTConfig(...) to convert a pretrained model, or ttt_file= to load a converted one")
    if clip_tau is not ...:
        config = config.replace(clip_tau=clip_tau)
    if lora_file is not None:
        require_safetensors(lora_file)
    lm = moshi_lm(model_file, lm_kwargs, device=device, dtype=dtype, lora_weights=lora_file, fuse_lora=lora_file is not None)
    require_finite(lm.state_dict().items(), model_file)
    convert(lm, config, rope_scaling=rope_scaling)
    if training:
        getattr(lm, SETTINGS_KEY)[TRAINING_KEY] = training
    if ttt_file is not None:
        params = {k: p for k, p in lm.named_parameters() if is_ttt_param(k)}
        missing, unknown = sorted(set(params) - set(ttt_weights)), sorted(set(ttt_weights) - set(params))
        if missing or unknown:
            raise ValueError(f"{ttt_file} does not match the model's TTT layers: missing {missing[:4]}, unexpected {unknown[:4]}")
        wrong = [f"{k} {list(t.shape)} (the model's: {list(params[k].shape)})" for k, t in ttt_weights.items() if t.shape != params[k].shape]
        if wrong:
            raise ValueError(f"{ttt_file}: TTT weights of another shape than the model's: {', '.join(wrong[:3])}")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(ttt_weights[k])
    return lm
