"""`ittt train` for Kyutai Moshi: In-Place TTT trained on pre-encoded conversations.

A run YAML with ``model_type: moshi`` lands here. Data: one safetensors file per conversation
holding ``codes``, an integer tensor ``[K, T]`` at Moshi's 12.5 Hz frame rate, K = 1 + n_q
streams in `LMModel` order (the text stream, the model's own audio codebooks, then the user's;
-1 marks a missing value: no input, no loss). A conversation is a document: it is cut into rows
of `data.row_length` steps (the last one right-padded with -1), and attention and fast weights
start afresh in every row, as they do when streaming starts a conversation.

Loss (moshi-finetune's): cross-entropy of the text stream plus that of the model's audio
codebooks, each a weighted mean over the valid positions (`LMOutput`'s masks), the first audio
codebook weighted by `train.first_codebook_weight` and text padding tokens by
`train.text_padding_weight`.

Modes: `ttt_only` (the TTT parameters and the TTT layers' down projections), `lora` (PEFT LoRA
on `lora.target_modules`, TTT parameters trained in full and never wrapped; `final/` has the
LoRA merged) and `full`. The loop is a plain one (AdamW, warmup + cosine, clipping with the
norm logged before clipping, per-layer TTT telemetry; with `model.dtype: bfloat16` the
optimizer updates float32 copies of the trainable parameters); `final/` holds moshi's own
``model.safetensors`` plus ``ttt.safetensors``, loaded with `adapters.moshi.load_moshi`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import TTTConfig
from ..files import write_atomic
from .config import MODES, LoraSettings, dump_config

CODES_KEY = "codes"


@dataclass
class MoshiModelConfig:
    weights: str = ""  # moshi's model.safetensors (published, or `final/` of an earlier run)
    ttt_weights: str | None = None  # ttt.safetensors of an earlier run: continue it (its settings win)
    lm_kwargs: str | None = None  # JSON file of LMModel keyword arguments; None: Moshi 7B's (moshi's defaults)
    dtype: str = "float32"  # "float32" or "bfloat16"
    device: str = "auto"  # "auto": cuda if available
    rope_scaling: dict[str, Any] | None = None  # YaRN, e.g. {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 3000}

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}")


@dataclass
class MoshiDataConfig:
    train: list[str] = field(default_factory=list)  # .safetensors files or folders of them
    row_length: int = 3000  # steps per row (12.5 per second: 3000 = 4 minutes)

    def __post_init__(self) -> None:
        if self.row_length < 2:
            raise ValueError(f"data.row_length must be >= 2; got {self.row_length}")


@dataclass
class MoshiTrainConfig:
    output_dir: str = "runs/moshi-ttt"
    mode: str = "ttt_only"
    learning_rate: float = 2e-6
    ttt_learning_rate: float | None = None  # None: same as learning_rate
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    max_steps: int = 1000
    batch_size: int = 1
    first_codebook_weight: float = 100.0  # moshi-finetune's example recipe
    text_padding_weight: float = 0.5  # moshi-finetune's example recipe
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.mode must be one of {MODES}; got {self.mode!r}")
        for name in ("max_steps", "batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1; got {getattr(self, name)}")
        if self.first_codebook_weight < 0 or self.text_padding_weight < 0:
            raise ValueError("train.first_codebook_weight and train.text_padding_weight must be >= 0")


@dataclass
class MoshiRunConfig:
    model_type: str = "moshi"
    model: MoshiModelConfig = field(default_factory=MoshiModelConfig)
    ttt: TTTConfig = field(default_factory=lambda: TTTConfig(target="token_embeddings"))
    data: MoshiDataConfig = field(default_factory=MoshiDataConfig)
    train: MoshiTrainConfig = field(default_factory=MoshiTrainConfig)
    lora: LoraSettings = field(
        default_factory=lambda: LoraSettings(target_modules=["in_projs.0", "out_projs.0", "linear_in", "linear_out"])
    )

    def __post_init__(self) -> None:
        if self.model_type != "moshi":
            raise ValueError(f"model_type must be 'moshi' for this recipe; got {self.model_type!r}")
        if not self.model.weights:
            raise ValueError("model.weights: give the path of a moshi model.safetensors")
        if not self.data.train:
            raise ValueError("data.train: give at least one conversation file or folder")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["ttt"] = self.ttt.to_dict()
        return d


# data -------------------------------------------------------------------------------------------


def conversation_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("*.safetensors"))
        elif p.is_file() and p.suffix == ".safetensors":
            files.append(p)
        else:
            raise ValueError(f"data.train: {p} is neither a .safetensors conversation nor a folder of them")
    if not files:
        raise ValueError(f"data.train: {paths} holds no .safetensors conversations")
    return files


def read_conversation(path: Path, num_codebooks: int, text_card: int, card: int) -> torch.Tensor:
    """The ``codes`` ``[K, T]`` (long) of one conversation file, checked against the model."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if CODES_KEY not in f.keys():
            raise ValueError(f"{path}: no '{CODES_KEY}' tensor (expected int codes [K, T]); found {list(f.keys())}")
        codes = f.get_tensor(CODES_KEY)
    if codes.dim() != 2 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"{path}: '{CODES_KEY}' must be an integer tensor [K, T]; got {codes.dtype} {list(codes.shape)}")
    if codes.shape[0] != num_codebooks:
        raise ValueError(f"{path}: '{CODES_KEY}' has {codes.shape[0]} streams; the model reads {num_codebooks} (text + {num_codebooks - 1} audio codebooks)")
    if codes.shape[1] == 0:
        raise ValueError(f"{path}: '{CODES_KEY}' holds no steps ({list(codes.shape)})")
    codes = codes.long()
    if codes.min() < -1 or codes[0].max() >= text_card or codes[1:].max() >= card:
        raise ValueError(f"{path}: codes outside the model's vocabularies (text < {text_card}, audio < {card}, -1 for missing)")
    return codes


def conversation_rows(conversations: list[torch.Tensor], row_length: int) -> torch.Tensor:
    """Cut each conversation into rows of `row_length` steps, right-padding the last with -1: ``[N, K, row_length]``."""
    rows = []
    for codes in conversations:
        for start in range(0, codes.shape[1], row_length):
            piece = codes[:, start : start + row_length]
            rows.append(F.pad(piece, (0, row_length - piece.shape[1]), value=-1))
    return torch.stack(rows)


# loss -------------------------------------------------------------------------------------------


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * CE) / sum(w)`` over positions with ``w > 0`` (`logits` ``[..., V]``)."""
    keep = weights > 0
    ce = F.cross_entropy(logits[keep].float(), target[keep], reduction="none")
    return (ce * weights[keep]).sum() / weights[keep].sum().clamp(min=1e-12)


def moshi_loss(lm, codes: torch.Tensor, first_codebook_weight: float = 1.0, text_padding_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """moshi-finetune's loss: text CE + audio CE over the valid positions; returns the loss and its parts."""
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
    return text + audio, {"text_loss": float(text.detach()), "audio_loss": float(audio.detach())}


# the run ----------------------------------------------------------------------------------------


def apply_mode(lm, config: MoshiRunConfig) -> list[torch.nn.Parameter]:
    """Freeze or wrap parameters for `train.mode`; returns the trainable ones."""
    from ..adapters.moshi import ttt_layers

    layers = dict(ttt_layers(lm))
    mode = config.train.mode
    if mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = config.lora
        inject_adapter_in_model(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules), lm)
    for name, p in lm.named_parameters():
        if mode == "full":
            p.requires_grad_(True)
        elif mode == "ttt_only":
            p.requires_grad_(".ttt." in name or any(p is layer.down.weight for layer in layers.values()))
        else:  # TTT parameters train in full, never through LoRA
            p.requires_grad_(".ttt." in name or "lora_" in name)
    return [p for p in lm.parameters() if p.requires_grad]


def merge_lora(lm) -> None:
    """Fold every LoRA adapter into its base Linear and put the Linear back (original names)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(lm.get_submodule(parent_name) if parent_name else lm, child, module.get_base_layer())


def master_weights(params: list[torch.nn.Parameter]) -> dict[int, torch.Tensor]:
    """What the optimizer updates, by `id` of each parameter: the parameter itself if float32,
    else a float32 copy, written back to the parameter after each step (as moshi-finetune's
    mixed precision does). A bf16 parameter updated in place loses any step below half its
    spacing: at lr 2e-6, every step of a 0.02 weight (spacing 1.2e-4) and of W_target's 1.0."""
    return {id(p): p if p.dtype == torch.float32 else p.detach().float() for p in params}


def _schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_moshi(config: MoshiRunConfig, resume: bool = False) -> Path:
    """Run a Moshi training as configured; returns the directory of the final model."""
    from ..adapters.moshi import load_moshi, save_ttt, ttt_layers
    from .telemetry import TTTTelemetry
    from .trainer import require_two_chunks

    if resume:
        raise ValueError("--resume is not supported for Moshi runs yet: start a new run with model.ttt_weights set to the last final/ttt.safetensors")
    t = config.train
    out = Path(t.output_dir)
    if (out / "final").exists():
        raise ValueError(f"{out} already holds a finished run; choose another train.output_dir")
    torch.manual_seed(t.seed)
    device = torch.device(config.model.device if config.model.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    lm_kwargs = json.loads(Path(config.model.lm_kwargs).read_text()) if config.model.lm_kwargs else None
    lm = load_moshi(
        config.model.weights, lm_kwargs, ttt_file=config.model.ttt_weights,
        config=None if config.model.ttt_weights else config.ttt, rope_scaling=config.model.rope_scaling,
        device=device, dtype=getattr(torch, config.model.dtype),
    )
    layers = dict(ttt_layers(lm))
    require_two_chunks(config.data.row_length, layers)
    chunk = max(layer.chunk_size for layer in layers.values())
    conversations = [read_conversation(p, lm.num_codebooks, lm.text_card, lm.card) for p in conversation_files(config.data.train)]
    rows = conversation_rows(conversations, config.data.row_length)
    short = int(((rows != -1).any(1).sum(1) < 2 * chunk).sum())  # steps holding any value, per row
    if short:
        warnings.warn(f"{short} of {len(rows)} rows hold fewer than two chunks ({2 * chunk} steps): TTT is inert in them")
    lm.transformer.checkpointing = t.gradient_checkpointing
    trainable = apply_mode(lm, config)
    master = master_weights(trainable)
    ttt_ids = {id(p) for n, p in lm.named_parameters() if ".ttt." in n}
    groups = [{"params": [master[id(p)] for p in trainable if id(p) not in ttt_ids]},
              {"params": [master[id(p)] for p in trainable if id(p) in ttt_ids], "lr": t.ttt_learning_rate or t.learning_rate}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.learning_rate, weight_decay=t.weight_decay)
    low = [(p, master[id(p)]) for p in trainable if master[id(p)] is not p]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, t.warmup_steps, t.max_steps))
    telemetry = TTTTelemetry(layers)
    telemetry.enable()
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(config))
    metrics = (out / "metrics.jsonl").open("a")
    lm.train()
    order = torch.randperm(len(rows))
    parts_sum: dict[str, float] = {}
    for step in range(t.max_steps):
        take = order[(step * t.batch_size + torch.arange(t.batch_size)) % len(rows)]  # epochs cycle through a shuffled order
        loss, parts = moshi_loss(lm, rows[take].to(device), t.first_codebook_weight, t.text_padding_weight)
        for p in trainable:
            p.grad = None
        loss.backward()
        telemetry.record_gradients()
        telemetry.record_forward()
        for p, m in low:
            m.grad = None if p.grad is None else p.grad.float()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(master.values()), t.max_grad_norm)  # returns the norm before clipping
        optimizer.step()
        with torch.no_grad():
            for p, m in low:
                p.copy_(m)
        scheduler.step()
        for k, v in {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **parts}.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v
        if (step + 1) % t.logging_steps == 0 or step + 1 == t.max_steps:
            n = (step % t.logging_steps) + 1
            logs = {"step": step + 1, **{k: v / n for k, v in parts_sum.items()}, "learning_rate": scheduler.get_last_lr()[0], **telemetry.flush()}
            metrics.write(json.dumps(logs) + "\n")
            metrics.flush()
            parts_sum = {}
    metrics.close()
    if t.mode == "lora":
        merge_lora(lm)
    return save_ttt(lm, out / "final")
