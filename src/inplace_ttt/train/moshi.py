"""The Moshi family of `ittt train`: Kyutai Moshi and pre-encoded conversations, for the shared engine.

A run YAML with ``model_type: moshi`` lands here. Data: one safetensors file per conversation
holding ``codes``, an integer tensor ``[K, T]`` at Moshi's 12.5 Hz frame rate, K = 1 + n_q
streams in `LMModel` order (the text stream, the model's own audio codebooks, then the user's;
-1 marks a missing value: no input, no loss). A conversation is a document: it is cut into rows
of `data.row_length` steps (the last one right-padded with -1), and attention and fast weights
start afresh in every row, as they do when streaming starts a conversation.

The engine trains `MoshiLoss`, the `LMModel` with moshi-finetune's weighted loss
(`families.moshi.loss`): the same modes, parameter groups, schedule, checkpoints,
``--resume``, several processes, evaluation and doctor as a transformers run. With
`model.dtype: bfloat16` the optimizer steps float32 copies of the trainable parameters
(`train.precision`). `final/` holds moshi's own ``model.safetensors`` plus ``ttt.safetensors``,
loaded with `families.moshi.load_moshi`. The codes files are `families.moshi.codes`'.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..config import TTTConfig
from .config import LoraSettings, RunBase, TrainConfig, adopt_ttt, check_row_length, meta, redefault
from .trainer import RunError, RunParts, require_ttt_context, require_two_chunks


@dataclass
class MoshiModelConfig:
    weights: str = field(default="", metadata=meta("moshi's model.safetensors (published, or final/ of an earlier run)", path=True))
    ttt_weights: str | None = field(default=None, metadata=meta("ttt.safetensors of an earlier run: continue it (its TTT settings win)", path=True))
    lm_kwargs: str | None = field(default=None, metadata=meta("a JSON file of LMModel keyword arguments; null: Moshi 7B's (moshi's defaults)", path=True))
    dtype: str = field(
        default="float32", metadata=meta("the weights' dtype (bfloat16: float32 master copies of the trained ones step)", ("float32", "bfloat16"))
    )
    device: str = field(default="auto", metadata=meta("where the model trains; auto: cuda if available", ("auto", "cpu", "cuda")))
    rope_scaling: dict[str, Any] | None = field(
        default=None, metadata=meta("YaRN, e.g. {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 3000}; null: none")
    )

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"model.device must be 'auto', 'cpu' or 'cuda'; got {self.device!r}")


@dataclass
class MoshiDataConfig:
    train: list[str] = field(default_factory=list, metadata=meta("conversation codes: .safetensors files or folders of them", path=True))
    eval: list[str] = field(default_factory=list, metadata=meta("held-out conversations, evaluated every train.eval_steps", path=True))
    row_length: int = field(default=3000, metadata=meta("steps per row (12.5 per second: 3000 = 4 minutes)"))

    def __post_init__(self) -> None:
        check_row_length(self.row_length)


@dataclass
class MoshiTrainConfig(TrainConfig):
    """The engine's settings with Moshi's defaults, plus moshi-finetune's loss weights."""

    output_dir: str = redefault(TrainConfig, "output_dir", "runs/moshi-ttt", "Moshi runs: 'runs/moshi-ttt'.")
    mode: str = redefault(TrainConfig, "mode", "ttt_only", "Moshi runs: 'ttt_only'.")
    learning_rate: float = redefault(TrainConfig, "learning_rate", 2e-6, "Moshi runs: 2e-6.")
    warmup_ratio: float = redefault(TrainConfig, "warmup_ratio", 0.0, "Moshi runs: 0.")
    max_steps: int = redefault(TrainConfig, "max_steps", 1000, "Moshi runs: 1000.")
    first_codebook_weight: float = field(default=100.0, metadata=meta("loss weight of the first audio codebook (moshi-finetune's example recipe)"))
    text_padding_weight: float = field(default=0.5, metadata=meta("loss weight of the text padding tokens (moshi-finetune's example recipe)"))

    def _check(self) -> None:
        super()._check()
        for name in ("first_codebook_weight", "text_padding_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"train.{name} must be a finite number >= 0; got {getattr(self, name)}")


@dataclass
class MoshiRunConfig(RunBase):
    """A run of Kyutai's Moshi on conversation codes."""

    MODEL_TYPE: ClassVar[str] = "moshi"

    model_type: str = redefault(RunBase, "model_type", "moshi", "")
    model: MoshiModelConfig = field(default_factory=MoshiModelConfig, metadata=meta("moshi's weights and how to load them"))
    ttt: TTTConfig = field(
        default_factory=lambda: TTTConfig(target_source="token_embeddings"),
        metadata=meta("the In-Place TTT settings (TTTConfig's fields); Moshi's default target_source: token_embeddings"),
    )
    data: MoshiDataConfig = field(default_factory=MoshiDataConfig, metadata=meta("conversation codes cut into rows"))
    train: MoshiTrainConfig = field(default_factory=MoshiTrainConfig, metadata=meta("the engine's settings with Moshi's defaults, and the loss weights"))
    lora: LoraSettings = field(
        default_factory=lambda: LoraSettings(target_modules=["in_projs.0", "out_projs.0", "linear_in", "linear_out"]),
        metadata=meta("LoRA settings for train.mode lora (Moshi's default target_modules: in_projs.0, out_projs.0, linear_in, linear_out)"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model.weights:
            raise ValueError("model.weights: give the path of a moshi model.safetensors")
        if not self.data.train:
            raise ValueError("data.train: give at least one conversation file or folder")


CONFIG = MoshiRunConfig


def load_rows(paths: list[str], lm: nn.Module, row_length: int, chunk: int, key: str) -> torch.Tensor:
    """The conversations of `paths` as rows, refusing data in which TTT would be inert."""
    from ..families.moshi.codes import conversation_files, conversation_rows, read_conversation

    try:
        predicted = lm.audio_offset + lm.dep_q
        conversations = [read_conversation(p, lm.num_codebooks, lm.text_card, lm.card, predicted) for p in conversation_files(paths, key)]
    except ValueError as e:
        raise RunError(str(e)) from None
    rows = conversation_rows(conversations, row_length)
    require_ttt_context((rows != -1).any(1).sum(1), chunk, key, "conversation row", "steps")  # steps holding any value, per row
    return rows


# the run ----------------------------------------------------------------------------------------


def load_lm(m: MoshiModelConfig, ttt: TTTConfig | None, device: torch.device | str = "cpu") -> nn.Module:
    """moshi's `get_moshi_lm` on the files of a `model` section, converted with `ttt` (or as
    saved in `m.ttt_weights`); every mismatch named with its file."""
    from safetensors import SafetensorError

    from ..families.moshi import load_moshi

    check_model_files(m)
    lm_kwargs = read_lm_kwargs(m.lm_kwargs)
    try:
        return load_moshi(
            m.weights,
            lm_kwargs,
            ttt_file=m.ttt_weights,
            config=None if m.ttt_weights else ttt,
            rope_scaling=m.rope_scaling,
            device=device,
            dtype=getattr(torch, m.dtype),
        )
    except (RuntimeError, TypeError, SafetensorError) as e:  # load_state_dict's size mismatches, unknown LMModel arguments
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"model.weights {m.weights} does not load with model.lm_kwargs {m.lm_kwargs or '(Moshi 7B defaults)'}: {first}") from None


def check_model_files(m: MoshiModelConfig) -> None:
    """Every file of a `model` section there, and the weights whole safetensors files."""
    from ..families.moshi import require_safetensors

    for key, path in (("model.weights", m.weights), ("model.ttt_weights", m.ttt_weights), ("model.lm_kwargs", m.lm_kwargs)):
        if path is not None and not Path(path).is_file():
            raise RunError(f"{key}: no such file: {path}")
    for key, path in (("model.weights", m.weights), ("model.ttt_weights", m.ttt_weights)):
        if path is not None:
            try:
                require_safetensors(path)
            except ValueError as e:
                raise RunError(f"{key}: {e}") from None


def settle(config: MoshiRunConfig) -> MoshiRunConfig:
    """The run's config with what its model fixes: a run that goes on from `model.ttt_weights`
    trains with their saved TTT settings, so a `ttt` key given that differs is refused, and the
    run (and its config.yaml) takes theirs."""
    from ..families.moshi import saved_settings

    if config.model.ttt_weights is None:
        return config
    check_model_files(config.model)
    try:
        saved, _, _ = saved_settings(config.model.ttt_weights)
    except ValueError as e:
        raise RunError(f"model.ttt_weights: {e}") from None
    num_layers = (read_lm_kwargs(config.model.lm_kwargs) or {}).get("num_layers")
    return replace(config, ttt=adopt_ttt(config.ttt, saved, num_layers, f"model.ttt_weights {config.model.ttt_weights}"))


def read_lm_kwargs(path: str | None) -> dict | None:
    """The `LMModel` keyword arguments of a JSON file (None: moshi's Moshi 7B defaults)."""
    if path is None:
        return None
    try:
        lm_kwargs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"model.lm_kwargs: cannot read {path} as JSON ({e})") from None
    if not isinstance(lm_kwargs, dict):
        raise RunError(f"model.lm_kwargs: {path} must hold a JSON object of LMModel keyword arguments")
    return lm_kwargs


def prepare(config: MoshiRunConfig) -> RunParts:
    """Model and conversations, checked against each other before anything trains."""
    from ..families.moshi.compile import compile_off_on_cpu

    if config.model.device == "cuda" and not torch.cuda.is_available():
        raise RunError("model.device: 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if config.model.device != "cpu" and torch.cuda.is_available() else "cpu")
    compile_off_on_cpu(device.type)  # before moshi is imported
    from ..doctor import doctor
    from ..families.moshi import MoshiLoss, save_ttt, settings, ttt_layers, unreached_parameters
    from ..families.moshi.codes import CODES_KEY, ConversationRows, collate
    from .modes import unwrap

    lm = load_lm(config.model, config.ttt, device)
    layers = dict(ttt_layers(lm))
    require_two_chunks(config.data.row_length, layers)
    chunk = max(layer.chunk_size for layer in layers.values())
    train_rows = load_rows(config.data.train, lm, config.data.row_length, chunk, "data.train")
    eval_rows = load_rows(config.data.eval, lm, config.data.row_length, chunk, "data.eval") if config.data.eval else None
    t = config.train

    def enable_checkpointing(module: nn.Module) -> None:
        unwrap(module).lm.transformer.checkpointing = True  # moshi's own activation checkpointing

    def first_batch_doctor(module: nn.Module, batch: dict, optimizer):  # converted here unless it continues a run's TTT weights
        return doctor(
            unwrap(module).lm,
            batch,
            optimizer=optimizer,
            training=True,
            fresh=config.model.ttt_weights is None,
            ttt_params_max_grad_norm=t.ttt_params_max_grad_norm,
        )

    return RunParts(
        module=MoshiLoss(lm, t.first_codebook_weight, t.text_padding_weight),
        layers=layers,
        train_dataset=ConversationRows(train_rows),
        eval_dataset=ConversationRows(eval_rows) if eval_rows is not None else None,
        collate=collate,
        save_final=lambda trained, directory: save_ttt(trained.lm, directory),
        doctor=first_batch_doctor,
        label_names=[CODES_KEY],
        enable_checkpointing=enable_checkpointing,
        use_cpu=device.type == "cpu",
        settings=settings(lm),
        train_rows=(train_rows,),
        unreached=unreached_parameters,
    )
