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
from ..speech.checkpoint import MoshiFiles
from .config import LoraSettings, RunBase, TrainConfig, adopt_ttt, check_row_length, meta, redefault
from .trainer import RunError, RunParts, require_ttt_context, require_two_chunks


@dataclass
class MoshiModelConfig:
    hf_repo: str | None = field(
        default=None,
        metadata=meta(
            "a Hugging Face repo id (e.g. kyutai/moshiko-pytorch-bf16): the files its config.json names, through huggingface_hub's "
            "cache (offline once cached), as moshi's CheckpointInfo.from_hf_repo; the keys below override its files"
        ),
    )
    weights: str = field(
        default="", metadata=meta("moshi's model.safetensors (published, or final/ of an earlier run); a path or hf://org/repo/file", path=True)
    )
    ttt_weights: str | None = field(default=None, metadata=meta("ttt.safetensors of an earlier run: continue it (its TTT settings win)", path=True))
    lm_kwargs: dict | str | None = field(
        default=None,
        metadata=meta(
            "the LMModel keyword arguments: a mapping, or a JSON file of them (moshi's config.json too); null: hf_repo's config.json, else Moshi 7B's",
            path=True,
        ),
    )
    mimi: str | None = field(default=None, metadata=meta("Mimi's weights, to encode wav manifests in data; null: hf_repo's", path=True))
    mimi_config: dict | str | None = field(default=None, metadata=meta("Mimi's settings (a mapping or a JSON file); null: the published Mimi's", path=True))
    tokenizer: str | None = field(default=None, metadata=meta("the text tokenizer (sentencepiece), to encode wav manifests; null: hf_repo's", path=True))
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
    train: list[str] = field(
        default_factory=list,
        metadata=meta(
            "conversation codes: .safetensors files or folders of them, or moshi-finetune manifests (.jsonl of wav files: encoded with "
            "Mimi on first use, then cached in codes_cache)",
            path=True,
        ),
    )
    eval: list[str] = field(default_factory=list, metadata=meta("held-out conversations (as train), evaluated every train.eval_steps", path=True))
    codes_cache: str | None = field(
        default=None, metadata=meta("where the codes of manifests' wav files are kept; null: ~/.cache/inplace_ttt/moshi-codes", path=True)
    )
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
class MoshiLoraSettings(LoraSettings):
    """LoRA settings, and how a LoRA run's final/ holds them (moshi-finetune's `save_adapters`)."""

    save_adapters: bool = field(
        default=False,
        metadata=meta(
            "final/ holds the adapters as moshi-finetune saves them (lora.safetensors and config.json, for moshi's loaders; "
            "ttt.safetensors beside them) instead of the merged model.safetensors"
        ),
    )


@dataclass
class MoshiRunConfig(RunBase):
    """A run of Kyutai's Moshi on conversation codes."""

    MODEL_TYPE: ClassVar[str] = "moshi"

    model_type: str = redefault(RunBase, "model_type", "moshi", "")
    model: MoshiModelConfig = field(default_factory=MoshiModelConfig, metadata=meta("moshi's weights and how to load them"))
    ttt: TTTConfig | None = field(
        default_factory=lambda: TTTConfig(target_source="token_embeddings"),
        metadata=meta(
            "the In-Place TTT settings (TTTConfig's fields); Moshi's default target_source: token_embeddings; "
            "null: the unconverted LMModel (the fair baseline: same codes, batches and seed)"
        ),
    )
    data: MoshiDataConfig = field(default_factory=MoshiDataConfig, metadata=meta("conversation codes cut into rows"))
    train: MoshiTrainConfig = field(default_factory=MoshiTrainConfig, metadata=meta("the engine's settings with Moshi's defaults, and the loss weights"))
    lora: MoshiLoraSettings = field(
        default_factory=lambda: MoshiLoraSettings(target_modules=["in_projs.0", "out_projs.0", "linear_in", "linear_out"]),
        metadata=meta("LoRA settings for train.mode lora (Moshi's default target_modules: in_projs.0, out_projs.0, linear_in, linear_out)"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model.weights and self.model.hf_repo is None:
            raise ValueError("model.weights: give the path of a moshi model.safetensors, or model.hf_repo (a Hugging Face repo id)")
        if not self.data.train:
            raise ValueError("data.train: give at least one conversation file or folder")
        if self.lora.save_adapters and self.train.mode != "lora":
            raise ValueError(
                f"lora.save_adapters: true saves LoRA adapters, but train.mode is {self.train.mode!r}: set it to 'lora', or save_adapters to false"
            )
        if self.ttt is None and self.model.ttt_weights is not None:
            raise ValueError("ttt: null trains the LMModel without TTT, but model.ttt_weights continues a TTT run: drop one of them")
        if self.ttt is None and self.train.mode == "ttt_only":
            raise ValueError(
                "train.mode 'ttt_only' trains the TTT layers, and ttt: null has none: the baseline without TTT trains in train.mode 'full' or 'lora'"
            )


CONFIG = MoshiRunConfig


def load_rows(paths: list[str], lm: nn.Module, row_length: int, chunk: int | None, key: str) -> torch.Tensor:
    """The conversations of `paths` as rows, refusing data in which TTT (of chunks of `chunk` steps; None: no TTT) would be inert."""
    from ..families.moshi.codes import conversation_files, conversation_rows, read_conversation

    try:
        predicted = lm.audio_offset + lm.dep_q
        conversations = [read_conversation(p, lm.num_codebooks, lm.text_card, lm.card, predicted) for p in conversation_files(paths, key)]
    except ValueError as e:
        raise RunError(str(e)) from None
    rows = conversation_rows(conversations, row_length)
    if chunk is not None:
        require_ttt_context((rows != -1).any(1).sum(1), chunk, key, "conversation row", "steps")  # steps holding any value, per row
    return rows


def codes_files(config: MoshiRunConfig, split: str, device: torch.device) -> list[str]:
    """`data.<split>` with each moshi-finetune manifest (``.jsonl``) replaced by its conversations'
    codes files (`speech.codes_cache`: encoded with the model's Mimi on first use, then cached)."""
    paths = getattr(config.data, split)
    if not any(Path(p).suffix == ".jsonl" for p in paths):
        return paths
    from ..speech.codes_cache import manifest_codes

    files = model_files(config.model)
    found = []
    for path in paths:
        if Path(path).suffix != ".jsonl":
            found.append(path)
            continue
        try:
            found += [str(p) for p in manifest_codes(path, files, config.data.codes_cache, str(device))]
        except ValueError as e:
            raise RunError(f"data.{split}: {e}") from None
    return found


# the run ----------------------------------------------------------------------------------------


def model_files(m: MoshiModelConfig) -> MoshiFiles:
    """The files of a `model` section, found as moshi's loaders find them (`speech.checkpoint`),
    each one there, and the weights whole safetensors files."""
    from ..speech.checkpoint import resolve_moshi_files

    for key, path in (("model.ttt_weights", m.ttt_weights), ("model.lm_kwargs", m.lm_kwargs if isinstance(m.lm_kwargs, str) else None)):
        if path is not None and not Path(path).is_file():
            raise RunError(f"{key}: no such file: {path}")
    if isinstance(m.lm_kwargs, str):
        _require_json_object(m.lm_kwargs)
    try:
        files = resolve_moshi_files(m.hf_repo, m.weights, m.lm_kwargs, m.mimi, m.tokenizer, m.mimi_config)
    except ValueError as e:
        raise RunError(str(e)) from None
    _require_safetensors(("model.weights", files.weights), ("model.ttt_weights", m.ttt_weights))
    return files


def _require_json_object(path: str) -> None:
    try:
        lm_kwargs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"model.lm_kwargs: cannot read {path} as JSON ({e})") from None
    if not isinstance(lm_kwargs, dict):
        raise RunError(f"model.lm_kwargs: {path} must hold a JSON object of LMModel keyword arguments")


def _require_safetensors(*named: tuple[str, Path | str | None]) -> None:
    from ..families.moshi import require_safetensors

    for key, path in named:
        if path is None:
            continue
        if not Path(path).is_file():
            raise RunError(f"{key}: no such file: {path}")
        try:
            require_safetensors(path)
        except ValueError as e:
            raise RunError(f"{key}: {e}") from None


def load_lm(m: MoshiModelConfig, ttt: TTTConfig | None, device: torch.device | str = "cpu") -> nn.Module:
    """moshi's `get_moshi_lm` on the files of a `model` section, converted with `ttt` (or as
    saved in `m.ttt_weights`); every mismatch named with its file."""
    from ..families.moshi import LMLoadError, load_base, load_moshi

    files = model_files(m)
    dtype = getattr(torch, m.dtype)
    try:
        if ttt is None and m.ttt_weights is None:  # the baseline: moshi's LMModel as its loader gives it
            return load_base(files.weights, files.lm_kwargs, device=device, dtype=dtype)
        return load_moshi(
            files.weights,
            files.lm_kwargs,
            ttt_file=m.ttt_weights,
            config=None if m.ttt_weights else ttt,
            rope_scaling=m.rope_scaling,
            device=device,
            dtype=dtype,
        )
    except LMLoadError as e:
        settings = "(Moshi 7B defaults)" if files.lm_kwargs is None else "inline" if isinstance(m.lm_kwargs, dict) else m.lm_kwargs or f"of {m.hf_repo}"
        raise RunError(f"model.weights {files.weights} does not load with model.lm_kwargs {settings}: {e}") from None


def settle(config: MoshiRunConfig) -> MoshiRunConfig:
    """The run's config with what its model fixes: a run that goes on from `model.ttt_weights`
    trains with their saved TTT settings, so a `ttt` key given that differs is refused, and the
    run (and its config.yaml) takes theirs."""
    from ..families.moshi import saved_settings

    if config.model.ttt_weights is None:
        return config
    files = model_files(config.model)
    try:
        saved, _, _ = saved_settings(config.model.ttt_weights)
    except ValueError as e:
        raise RunError(f"model.ttt_weights: {e}") from None
    num_layers = (files.lm_kwargs or {}).get("num_layers")
    return replace(config, ttt=adopt_ttt(config.ttt, saved, num_layers, f"model.ttt_weights {config.model.ttt_weights}"))


def prepare(config: MoshiRunConfig) -> RunParts:
    """Model and conversations, checked against each other before anything trains."""
    from ..families.moshi.compile import compile_off_on_cpu

    if config.model.device == "cuda" and not torch.cuda.is_available():
        raise RunError("model.device: 'cuda' but no CUDA device is available")
    device = torch.device("cuda" if config.model.device != "cpu" and torch.cuda.is_available() else "cpu")
    compile_off_on_cpu(device.type)  # before moshi is imported
    from ..doctor import doctor
    from ..families.moshi import MoshiLoss, settings, ttt_layers, unreached_parameters
    from ..families.moshi.codes import CODES_KEY, ConversationRows, collate
    from .modes import unwrap

    lm = load_lm(config.model, config.ttt, device)
    layers = dict(ttt_layers(lm))
    if layers:
        require_two_chunks(config.data.row_length, layers)
    chunk = max((layer.chunk_size for layer in layers.values()), default=None)  # None: no TTT, any row length
    train_rows = load_rows(codes_files(config, "train", device), lm, config.data.row_length, chunk, "data.train")
    eval_rows = load_rows(codes_files(config, "eval", device), lm, config.data.row_length, chunk, "data.eval") if config.data.eval else None
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
            steps=t.max_steps if t.max_steps > 0 else None,
        )

    return RunParts(
        module=MoshiLoss(lm, t.first_codebook_weight, t.text_padding_weight),
        layers=layers,
        train_dataset=ConversationRows(train_rows),
        eval_dataset=ConversationRows(eval_rows) if eval_rows is not None else None,
        collate=collate,
        save_final=lambda trained, directory: save_moshi(trained.lm, directory),
        save_adapters=(lambda trained, directory: save_adapters(trained, directory, model_files(config.model).lm_kwargs))
        if config.lora.save_adapters
        else None,
        doctor=first_batch_doctor,
        label_names=[CODES_KEY],
        enable_checkpointing=enable_checkpointing,
        use_cpu=device.type == "cpu",
        settings=settings(lm) if layers else None,
        train_rows=(train_rows,),
        unreached=unreached_parameters,
    )


def save_moshi(lm: nn.Module, directory: Path) -> None:
    """`final/`: moshi's own ``model.safetensors``, with ``ttt.safetensors`` beside it when the model
    has TTT layers (`save_ttt`); what `moshi-eval`, `moshi-infer` and moshi's loaders read."""
    from safetensors.torch import save_file

    from ..families.moshi import save_ttt, ttt_layers

    if any(True for _ in ttt_layers(lm)):
        save_ttt(lm, directory)
        return
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in lm.state_dict().items()}, str(directory / "model.safetensors"))


def save_adapters(trained: nn.Module, directory: Path, lm_kwargs: dict | None) -> None:
    """`final/` of a LoRA run as moshi-finetune saves it (`save_adapters: true`): ``lora.safetensors``,
    the adapters under moshi's names (``<module>.lora_A.weight``, ``<module>.lora_B.weight``: its
    `LoRALinear`), and ``config.json``, the LMModel settings with ``lora``, ``lora_rank`` and
    ``lora_scaling``, which moshi's `get_moshi_lm` reads to fold them in (PEFT's ``alpha / r`` is
    moshi's scaling); with TTT, ``ttt.safetensors`` beside them. `trained`: PEFT's model around a
    `MoshiLoss`."""
    from moshi.models.loaders import _lm_kwargs as moshi_7b
    from safetensors.torch import save_file

    from ..families.moshi import save_ttt_weights, ttt_layers
    from ..files import write_atomic

    lm = trained.base_model.model.lm
    config = trained.peft_config["default"]
    prefix = "base_model.model.lm."
    adapters = {}
    for name, p in trained.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            adapters[name.removeprefix(prefix).replace(".default.", ".")] = p.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapters, str(directory / "lora.safetensors"))
    settings = {**(moshi_7b if lm_kwargs is None else lm_kwargs), "lora": True, "lora_rank": config.r, "lora_scaling": config.lora_alpha / config.r}
    write_atomic(directory / "config.json", json.dumps(settings, indent=2))
    if any(True for _ in ttt_layers(lm)):
        save_ttt_weights(lm, directory, {n.removeprefix(prefix): p for n, p in trained.named_parameters()})
