"""The from-scratch family of `ittt train` (``model_type: scratch``, what `ittt pretrain` runs):
a small Llama-style model and its byte-level BPE tokenizer, trained from nothing.

This is how the embedded base model (`inplace_ttt.assets.base_model_dir()`) was made: a gated
SiLU MLP, RoPE model trained on packed rows of whole documents with positions restarting per
document. `model.sliding_window` makes it a sliding-window attention model (transformers'
Mistral, whose attention only reaches the last `sliding_window` tokens); a `ttt:` section (the
same `TTTConfig` fields as a transformers run's) converts it before the first step, so In-Place
TTT trains from scratch with it (the paper's section 4.2). Everything else is a transformers run:
the same data packing, engine, doctor, run folder; what this family adds is the tokenizer (trained
on `data.train` unless `tokenizer.path` names one; a resumed run takes its checkpoint's), a model
built from the `model` section instead of loaded, and ``final/pretrain_summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, PreTrainedModel, PreTrainedTokenizerFast, TrainerCallback

from ..config import TTTConfig
from ..documents import read_documents
from ..families import convert
from ..files import write_atomic
from .causal_lm import causal_lm_parts
from .config import DataConfig, RunBase, meta, redefault
from .data import build_dataset
from .run_dir import last_complete_checkpoint
from .trainer import RunError, RunParts

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SUMMARY = "pretrain_summary.json"


@dataclass
class TokenizerSettings:
    path: str | None = field(default=None, metadata=meta("an existing tokenizer (directory or hub id); null: train a byte-level BPE on data.train", path=True))
    vocab_size: int = field(default=4096, metadata=meta("the trained BPE's vocabulary, special tokens included (>= 300)"))

    def __post_init__(self) -> None:
        if self.vocab_size < 300:  # 256 byte symbols + the special tokens + some merges
            raise ValueError(f"tokenizer.vocab_size must be >= 300; got {self.vocab_size}")


@dataclass
class ArchitectureConfig:
    """The model's shape; the vocabulary size comes from the tokenizer. `sliding_window` (tokens a
    query attends to, itself included; None: full causal attention) builds transformers' Mistral,
    which is Llama with that window."""

    hidden_size: int = field(default=256, metadata=meta("width of the residual stream"))
    intermediate_size: int = field(default=768, metadata=meta("width of the gated SiLU MLP"))
    num_hidden_layers: int = field(default=4, metadata=meta("decoder layers"))
    num_attention_heads: int = field(default=4, metadata=meta("query heads (hidden_size must be a multiple)"))
    num_key_value_heads: int = field(default=4, metadata=meta("key/value heads (num_attention_heads must be a multiple)"))
    max_position_embeddings: int = field(default=8192, metadata=meta("the longest position the model is built for (>= data.row_length)"))
    rope_theta: float = field(default=10000.0, metadata=meta("RoPE base"))
    tie_word_embeddings: bool = field(default=True, metadata=meta("one matrix for the input embedding and the output head"))
    sliding_window: int | None = field(default=None, metadata=meta("tokens a query attends to (a Mistral); null: full causal attention (a Llama)"))
    init_from: str | None = field(default=None, metadata=meta("a model directory of the same shape whose weights start the run; null: random", path=True))

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1; got {getattr(self, name)}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"model.sliding_window must be None (full attention) or >= 1 tokens; got {self.sliding_window}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"model.num_attention_heads ({self.num_attention_heads}) must be a multiple of model.num_key_value_heads ({self.num_key_value_heads})"
            )


@dataclass
class ScratchRunConfig(RunBase):
    """A run that trains a model (and its tokenizer) from scratch."""

    MODEL_TYPE: ClassVar[str] = "scratch"

    model_type: str = redefault(RunBase, "model_type", "scratch", "")
    model: ArchitectureConfig = field(default_factory=ArchitectureConfig, metadata=meta("the model's shape"))
    ttt: TTTConfig | None = field(default=None, metadata=meta("In-Place TTT from step 0 (TTTConfig's fields); null: a plain model"))
    data: DataConfig = field(default_factory=DataConfig, metadata=meta("text documents packed into rows"))
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings, metadata=meta("the tokenizer: trained here, or an existing one"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data.train:
            raise ValueError("data.train: give at least one file or folder of training documents")
        if self.data.row_length > self.model.max_position_embeddings:
            raise ValueError(f"data.row_length ({self.data.row_length}) exceeds model.max_position_embeddings ({self.model.max_position_embeddings})")


CONFIG = ScratchRunConfig


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


def _tokenizer(config: ScratchRunConfig):
    """The configured tokenizer, the one a resumed run trained (saved with its checkpoints), or a new one."""
    if config.tokenizer.path:
        try:
            return AutoTokenizer.from_pretrained(config.tokenizer.path)
        except OSError as e:
            raise RunError(f"tokenizer.path: cannot load {config.tokenizer.path!r}: {e}") from None
    checkpoint = last_complete_checkpoint(config.train.output_dir)  # only a run being resumed has one: a new run's folder is empty
    if checkpoint is not None and (checkpoint / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(checkpoint)
    data = config.data
    return train_tokenizer(read_documents(data.train, data.text_field, data.txt_split), config.tokenizer.vocab_size)


class PretrainSummary(TrainerCallback):
    """What a from-scratch run did (tokens seen, time, losses), for ``final/pretrain_summary.json``;
    with held-out data it asks for one last evaluation after the last step (its loss is the summary's)."""

    def __init__(self, model: PreTrainedModel, tokenizer, row_length: int, train_targets: int, evaluate: bool):
        self.facts = {"parameters": model.num_parameters(), "vocab_size": len(tokenizer), "row_length": row_length}
        self.train_targets, self.evaluate = train_targets, evaluate
        self.summary: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.evaluate and state.global_step >= state.max_steps:
            control.should_evaluate = True

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.started
        tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * self.facts["row_length"]
        losses = [log["loss"] for log in state.log_history if "loss" in log]
        self.summary = {
            **self.facts,
            "steps": state.global_step,
            "tokens_seen": state.global_step * tokens_per_step,
            "train_targets_per_epoch": self.train_targets,
            "epochs": state.epoch,
            "wall_seconds": round(seconds, 1),
            "tokens_per_second": round((state.global_step - self.first_step) * tokens_per_step / seconds),
            "final_train_loss": losses[-1] if losses else None,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
        if self.evaluate:
            self.summary["heldout_loss"] = next(log["eval_loss"] for log in reversed(state.log_history) if "eval_loss" in log)

    def write(self, folder: Path) -> None:
        write_atomic(folder / SUMMARY, json.dumps(self.summary, indent=2) + "\n")
        print(json.dumps(self.summary, indent=2), flush=True)


def settle(config: ScratchRunConfig) -> ScratchRunConfig:
    """Nothing to settle: the model is built from the config."""
    return config


def prepare(config: ScratchRunConfig) -> RunParts:
    """Tokenizer (trained here unless given), data, and the model built from the `model` section."""
    tokenizer = _tokenizer(config)
    train_rows = build_dataset(config.data, tokenizer, config.data.train)
    eval_rows = build_dataset(config.data, tokenizer, config.data.eval) if config.data.eval else None
    model = build_model(config.model, tokenizer, config.ttt)
    summary = PretrainSummary(model, tokenizer, config.data.row_length, int((train_rows.labels != -100).sum()), evaluate=eval_rows is not None)
    return causal_lm_parts(config, model, tokenizer, train_rows, eval_rows, fresh=True, also_save=summary.write, callbacks=[summary])
