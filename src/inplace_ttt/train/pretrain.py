"""`ittt pretrain`: train a small Llama-style model, and its byte-level BPE tokenizer, from scratch.

This is how the embedded base model (`inplace_ttt.assets.base_model_dir()`) was made: a gated
SiLU MLP, RoPE model trained on packed rows of whole documents with positions restarting per
document. `model.sliding_window` makes it a sliding-window attention model (transformers'
Mistral, whose attention only reaches the last `sliding_window` tokens); a `ttt:` section (the
same `TTTConfig` fields as `ittt train`'s) converts it before the first step, so In-Place TTT
trains from scratch with it (the paper's section 4.2). It reuses `ittt train`'s YAML handling,
data packing, Trainer arguments and complete-only checkpoints; what it adds is the tokenizer and
a model built from the `model` section instead of loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, PreTrainedModel, PreTrainedTokenizerFast, set_seed

from ..config import TTTConfig
from ..documents import read_documents
from ..families import convert, ttt_layers
from ..files import write_atomic
from .config import DataConfig, TrainConfig
from .data import build_dataset, collate
from .run_dir import start_run_dir, write_final
from .telemetry import MetricsJsonl, TTTTelemetry
from .trainer import RunError, TTTTrainer, require_two_chunks, training_arguments, use_bf16

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SUMMARY = "pretrain_summary.json"


@dataclass
class TokenizerSettings:
    path: str | None = None  # an existing tokenizer; None: train a byte-level BPE on data.train
    vocab_size: int = 4096

    def __post_init__(self) -> None:
        if self.vocab_size < 300:  # 256 byte symbols + the special tokens + some merges
            raise ValueError(f"tokenizer.vocab_size must be >= 300; got {self.vocab_size}")


@dataclass
class ArchitectureConfig:
    """The model's shape; the vocabulary size comes from the tokenizer. `sliding_window` (tokens a
    query attends to, itself included; None: full causal attention) builds transformers' Mistral,
    which is Llama with that window."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    sliding_window: int | None = None
    init_from: str | None = None  # a model directory of the same shape whose weights start the run (None: random)

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"model.sliding_window must be None (full attention) or >= 1 tokens; got {self.sliding_window}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be a multiple of model.num_key_value_heads ({self.num_key_value_heads})"
            )


@dataclass
class PretrainConfig:
    model: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ttt: TTTConfig | None = None  # In-Place TTT from step 0; None: a plain model

    def __post_init__(self) -> None:
        if not self.data.train:
            raise ValueError("data.train: give at least one file or folder of training documents")
        if self.data.row_length > self.model.max_position_embeddings:
            raise ValueError(f"data.row_length ({self.data.row_length}) exceeds model.max_position_embeddings ({self.model.max_position_embeddings})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ttt"] = self.ttt.to_dict() if self.ttt is not None else None
        return d


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, nothing is unknown) with `<s>`, `</s>`, `<pad>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, bpe)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False)


def build_model(arch: ArchitectureConfig, tokenizer, ttt: TTTConfig | None = None) -> PreTrainedModel:
    """A Llama (full attention) or a Mistral (`arch.sliding_window` set), converted to In-Place TTT
    when `ttt` is given."""
    shape = asdict(arch)
    window, init_from = shape.pop("sliding_window"), shape.pop("init_from")
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if window is None:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_act="silu", **special, **shape)
    else:
        config = MistralConfig(vocab_size=len(tokenizer), hidden_act="silu", sliding_window=window, **special, **shape)
    model = AutoModelForCausalLM.from_config(config)
    if init_from is not None:
        _load_weights(model, Path(init_from))
    return convert(model, ttt) if ttt is not None else model


def _load_weights(model: PreTrainedModel, directory: Path) -> None:
    """Copy the weights of a saved model of the same shape (safetensors) into `model`; the
    attention pattern may differ (a full-attention model can start a sliding-window one)."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise RunError(f"model.init_from: {directory} holds no .safetensors weights")
    weights = {k: v for f in files for k, v in load_file(f).items()}
    own = model.state_dict()
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
        own.pop("lm_head.weight", None)
    wrong = sorted(k for k in own if k not in weights or weights[k].shape != own[k].shape)
    extra = sorted(set(weights) - set(own))
    if wrong or extra:
        raise RunError(f"model.init_from: {directory} does not match the model section: differing or missing {wrong[:4]}, unexpected {extra[:4]}")
    model.load_state_dict(weights, strict=False)


def _tokenizer(config: PretrainConfig, out: Path):
    """The configured tokenizer, the one this run trained before (resume), or a new one."""
    if config.tokenizer.path:
        try:
            return AutoTokenizer.from_pretrained(config.tokenizer.path)
        except OSError as e:
            raise RunError(f"tokenizer.path: cannot load {config.tokenizer.path!r}: {e}") from None
    saved = out / "tokenizer"
    if (saved / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(saved)
    data = config.data
    tokenizer = train_tokenizer(read_documents(data.train, data.text_field, data.txt_split), config.tokenizer.vocab_size)
    tokenizer.save_pretrained(saved)
    return tokenizer


def pretrain(config: PretrainConfig, resume: bool = False, allow_changes: bool = False) -> Path:
    """Train the tokenizer (unless given) and the model; returns the final model's directory,
    which also holds the tokenizer and `pretrain_summary.json` (tokens seen, time, losses)."""
    out = Path(config.train.output_dir)
    checkpoint = start_run_dir(config, resume, allow_changes)
    set_seed(config.train.seed)
    tokenizer = _tokenizer(config, out)
    train_rows = build_dataset(config.data, tokenizer, config.data.train)
    eval_rows = build_dataset(config.data, tokenizer, config.data.eval) if config.data.eval else None
    model = build_model(config.model, tokenizer, config.ttt)
    layers = dict(ttt_layers(model))
    if layers:
        require_two_chunks(config.data.row_length, layers)

    t = config.train
    telemetry = TTTTelemetry(layers)
    trainer = TTTTrainer(
        model=model,
        args=training_arguments(t, out, use_bf16(t.bf16), evaluate=eval_rows is not None),
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[MetricsJsonl(out / "metrics.jsonl")],
        ttt_params_learning_rate=t.ttt_params_learning_rate,
        ttt_params_max_grad_norm=t.ttt_params_max_grad_norm,
        telemetry=telemetry,
    )
    telemetry.enable()
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start

    final = out / "final"
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    rows_per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * trainer.args.world_size
    steps = trainer.state.global_step - (int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    summary = {
        "parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "row_length": config.data.row_length,
        "steps": trainer.state.global_step,
        "tokens_seen": trainer.state.global_step * rows_per_step * config.data.row_length,
        "train_targets_per_epoch": int((train_rows.labels != -100).sum()),
        "epochs": trainer.state.epoch,
        "wall_seconds": round(seconds, 1),
        "tokens_per_second": round(steps * rows_per_step * config.data.row_length / seconds),
        "final_train_loss": losses[-1] if losses else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if eval_rows is not None:
        summary["heldout_loss"] = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        model.config.use_cache = True  # the Trainer turned it off for training; generation wants it

        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            write_atomic(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")

        write_final(out, save)
        print(json.dumps(summary, indent=2), flush=True)
    return final
