"""`ittt train`: continual training of a converted model on transformers' `Trainer`.

The Trainer (on Accelerate) does what a distributed training loop needs: gradient
accumulation, mixed precision, activation checkpointing, schedules, clipping, DDP/FSDP,
TensorBoard, resumable checkpoints. We add what is specific to In-Place TTT:

- modes: `full`, `ttt_only` (TTT parameters + the TTT layers' down projections), `lora` (PEFT
  LoRA on base modules, TTT parameters trained in full), and a learning rate of their own for
  the TTT parameters;
- telemetry per TTT layer, gradient norms read before clipping;
- checkpoints that hold every trained weight (LoRA mode: the adapter plus the TTT weights) and
  count only once complete (a `COMPLETE` file is their last write), so a run killed at any
  moment resumes from its last complete checkpoint;
- `doctor` on the first batch, stopping the run on a failed check.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import rotate_checkpoints

from ..adapters import convert, from_pretrained, ttt_layers
from ..adapters.hf import is_ttt_checkpoint
from ..doctor import doctor
from ..files import write_atomic
from .config import DataConfig, RunConfig, TrainConfig, dump_config
from ..documents import read_documents
from .data import PackedRows, collate, pack, tokenize
from .telemetry import MetricsJsonl, TTTTelemetry

COMPLETE = "COMPLETE"
TTT_WEIGHTS = "ttt_weights.safetensors"


class RunError(ValueError):
    """A run cannot start or go on; the message says why."""


class TTTTrainer(Trainer):
    """`Trainer` with TTT parameter groups, pre-clip telemetry and complete-only checkpoints."""

    def __init__(self, *args, ttt_learning_rate: float | None = None, telemetry: TTTTelemetry, **kwargs):
        super().__init__(*args, **kwargs)
        self.ttt_learning_rate = ttt_learning_rate
        self.telemetry = telemetry

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, p in opt_model.named_parameters():
                if p.requires_grad:
                    groups.setdefault((name in decay, _is_ttt_param(name)), []).append(p)
            param_groups = []
            for (decays, is_ttt), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
                if is_ttt and self.ttt_learning_rate is not None:
                    group["lr"] = self.ttt_learning_rate
                param_groups.append(group)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(param_groups, **kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model):
        self.telemetry.record_gradients()
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # no clipping configured: this is where the step's gradients are final
            self.telemetry.record_gradients()
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.telemetry.record_forward()
        return loss

    def log(self, logs, start_time=None):
        if "loss" in logs:
            logs = {**logs, **self.telemetry.flush()}
        super().log(logs, start_time)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if _is_peft(self.model) and self.args.should_save:  # PEFT saves the adapter only
            from safetensors.torch import save_file

            ttt = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if _is_ttt_param(n)}
            save_file(ttt, os.path.join(output_dir or self.args.output_dir, TTT_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        extra = Path(resume_from_checkpoint) / TTT_WEIGHTS
        if extra.is_file():
            from safetensors.torch import load_file

            params = dict((model or self.model).named_parameters())
            with torch.no_grad():
                for name, tensor in load_file(extra).items():
                    params[name].copy_(tensor)

    def _save_checkpoint(self, model, trial):
        # write the checkpoint, mark it complete, and only then let older checkpoints go
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            latest = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            write_atomic(latest / COMPLETE, json.dumps({"step": self.state.global_step}) + "\n")
            rotate_checkpoints(
                output_dir=str(latest.parent), save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint
            )


def require_two_chunks(row_length: int, layers: dict) -> None:
    """Refuse rows shorter than two chunks of the TTT layers: nothing precedes a row's first chunk."""
    chunk = max(layer.chunk_size for layer in layers.values())
    if row_length < 2 * chunk:
        raise RunError(
            f"data.row_length={row_length} is shorter than two TTT chunks (chunk_size {chunk}): nothing "
            "precedes a row's first chunk, so TTT would be inert. Use rows of at least 2 chunks or a smaller chunk_size"
        )


def _is_ttt_param(name: str) -> bool:
    return ".ttt." in name


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest `checkpoint-N` of a run that was completely written."""
    done = [p for p in Path(output_dir).glob("checkpoint-*") if (p / COMPLETE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def load_model(config: RunConfig, dtype: torch.dtype):
    """The model to train: a saved In-Place TTT model as it is, or a base model converted
    (left as it is with ``ttt: null``, the baseline without TTT)."""
    if is_ttt_checkpoint(config.model):
        if config.ttt is None:
            raise RunError(f"ttt: null trains a model without TTT, but {config.model} is an In-Place TTT checkpoint")
        return from_pretrained(config.model, dtype=dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    except OSError as e:
        raise RunError(f"model: cannot load {config.model!r}: {e}") from None
    return model if config.ttt is None else convert(model, config.ttt)


def apply_mode(model, config: RunConfig):
    """Freeze / wrap parameters for the training mode; returns the model to train."""
    layers = dict(ttt_layers(model))
    mode = config.train.mode
    if mode == "ttt_only":
        if not layers:
            raise RunError("train.mode=ttt_only but the model has no TTT layers")
        trainable = {id(p) for layer in layers.values() for p in (*layer.ttt.parameters(), layer.down.weight)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        peft_model = get_peft_model(
            model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
        )
        for name, p in peft_model.named_parameters():  # TTT parameters train in full, never through LoRA
            if _is_ttt_param(name):
                p.requires_grad_(True)
        return peft_model
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def use_bf16(setting: str) -> bool:
    if setting == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return setting == "true"


def build_dataset(data: DataConfig, tokenizer, paths: list[str]) -> PackedRows:
    docs = tokenize(read_documents(paths, data.text_field, data.txt_split), tokenizer, data.add_eos)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    return pack(docs, data.row_length, pad)


def prepare_run_dir(config, resume: bool) -> Path | None:
    """Create `train.output_dir` (refusing to overwrite a run unless resuming) and write the
    config there; returns the checkpoint to resume from."""
    out = Path(config.train.output_dir)
    checkpoint = None
    if resume:
        checkpoint = last_complete_checkpoint(out)
        if checkpoint is None:
            raise RunError(f"--resume: {out} holds no complete checkpoint")
        for partial in out.glob("checkpoint-*"):  # a checkpoint cut off mid-write is never used
            if not (partial / COMPLETE).is_file():
                shutil.rmtree(partial)
    elif any(out.glob("checkpoint-*")) or (out / "final").exists():
        raise RunError(f"{out} already holds a run: pass --resume to continue it, or choose another train.output_dir")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(config))
    return checkpoint


# transformers renamed `gradient_checkpointing` to `activation_checkpointing` (5.2x); accept both
_CHECKPOINTING_ARG = next(
    name for name in ("activation_checkpointing", "gradient_checkpointing") if name in {f.name for f in dataclasses.fields(TrainingArguments)}
)


def training_arguments(t: TrainConfig, out: Path, bf16: bool, evaluate: bool) -> TrainingArguments:
    """The Trainer's arguments from the `train` section."""
    return TrainingArguments(
        output_dir=str(out),
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        bf16=bf16,
        **{_CHECKPOINTING_ARG: t.gradient_checkpointing},
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if evaluate and t.eval_steps else "no",
        eval_steps=t.eval_steps,
        seed=t.seed,
        data_seed=t.seed,
        report_to=t.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_num_workers,
        fsdp=t.fsdp,
        fsdp_config=t.fsdp_config,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )


def train(config: RunConfig, resume: bool = False) -> Path:
    """Run training as configured; returns the directory of the final model."""
    if getattr(config, "model_type", None) == "moshi":
        from .moshi import train_moshi

        return train_moshi(config, resume=resume)
    out = Path(config.train.output_dir)
    checkpoint = prepare_run_dir(config, resume)

    bf16 = use_bf16(config.train.bf16)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or config.model)
    except OSError as e:
        raise RunError(f"tokenizer: cannot load {config.tokenizer or config.model!r}: {e}") from None
    train_rows = build_dataset(config.data, tokenizer, config.data.train)  # data errors first: nothing loaded yet
    eval_rows = build_dataset(config.data, tokenizer, config.data.eval) if config.data.eval else None
    set_seed(config.train.seed)  # before the conversion: a random W_target start must be the same in every run
    model = load_model(config, torch.float32)
    layers = dict(ttt_layers(model))
    if layers:
        require_two_chunks(config.data.row_length, layers)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    for rows in (train_rows, eval_rows or train_rows):
        top = int(rows.input_ids.max())
        if top >= vocab_rows:
            raise RunError(
                f"tokenizer mismatch: the data has token id {top} but the model's embedding has {vocab_rows} rows; "
                "use the model's own tokenizer"
            )
    model = apply_mode(model, config)

    t = config.train
    args = training_arguments(t, out, bf16, evaluate=eval_rows is not None)
    telemetry = TTTTelemetry(layers)
    trainer = TTTTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[MetricsJsonl(out / "metrics.jsonl")],
        ttt_learning_rate=t.ttt_learning_rate,
        telemetry=telemetry,
    )
    if t.doctor and layers:
        trainer.create_optimizer()
        first = collate([train_rows[i] for i in range(min(t.per_device_train_batch_size, len(train_rows)))])
        inner = model.base_model.model if _is_peft(model) else model
        device = next(inner.parameters()).device  # the Trainer has placed the model (on a GPU, say)
        batch = {k: first[k].to(device) for k in ("input_ids", "position_ids")}
        report = doctor(inner, batch, optimizer=trainer.optimizer, training=True)
        if trainer.is_world_process_zero():
            print(f"doctor on the first batch:\n{report}", flush=True)
        if not report.ok:
            raise RunError(f"doctor found problems on the first batch; not training:\n{report}")
    telemetry.enable()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    final = out / "final"
    if trainer.is_world_process_zero():
        to_save = model.merge_and_unload() if _is_peft(model) else model
        to_save.save_pretrained(final)
        tokenizer.save_pretrained(final)
    return final
