"""The training engine of `ittt train`, the same for every model family: transformers' `Trainer`.

The Trainer (on Accelerate) does what a distributed training loop needs: gradient
accumulation, mixed precision, activation checkpointing, schedules, clipping, DDP/FSDP,
TensorBoard, a progress bar, evaluation, resumable checkpoints. It trains any `nn.Module`
whose forward returns a dict with a ``loss``: a transformers causal LM as it is, a Moshi
`LMModel` inside `families.moshi.MoshiLoss`. A model family (`train.causal_lm`, `train.moshi`,
`train.scratch`) loads the model and the data and hands the engine a `RunParts`; `train.run`
picks the family. The Trainer's arguments are the run's `train` section (`train.config.TrainConfig`,
a `TrainingArguments`). We add what is specific to In-Place TTT through transformers' public
extension points (callbacks, `create_optimizer`, `compute_loss`, `training_step`, `log`, `train`,
`save_model`); three private methods remain overridden where it has none, each saying why:

- modes (`train.modes`) and a learning rate of their own for the TTT parameters, and optionally
  a gradient clipping of their own (`train.ttt_params_max_grad_norm`): at the warm start their
  gradients can be hundreds of times the others', and one global clip then scales every other
  update down by as much;
- float32 master weights for trainable parameters held in bf16 (`train.precision`);
- telemetry per TTT layer, gradient norms read before clipping (`train.telemetry`);
- checkpoints that hold every trained weight (LoRA mode: the adapter plus the TTT weights) and
  count only once complete (a `COMPLETE` file is their last write), so a run killed at any
  moment resumes from its last complete checkpoint;
- `doctor` on the first batch, stopping the run on a failed check;
- a loss or gradient that goes non-finite stops the run at that step, before anything broken is
  saved (`train.nonfinite`);
- a run folder that is checked before anything is written to it, locked while the run lives,
  and never mixes two runs or loses one (`train.run_dir`).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedModel, Trainer, TrainerCallback, set_seed
from transformers.trainer_callback import ProgressCallback

from ..families.record import TRAINING_KEY, run_entry, split_training
from ..layer import InPlaceTTTMLP, is_ttt_param, ttt_switched_off
from .config import CHECKPOINTING_KEYS, TrainConfig
from .modes import ModeError, apply_mode, is_peft, merged, unwrap
from .nonfinite import nonfinite_gradient, nonfinite_loss, nonfinite_weights, stopped
from .precision import MasterWeights
from .run_dir import (
    RunError,
    checkpoint_step,
    end_at_checkpoint,
    mark_checkpoint_complete,
    mark_checkpoint_started,
    named_folder_errors,
    not_created_yet,
    release_run_dir,
    resume_point,
    rotate_checkpoints,
    start_run_dir,
    trained_steps,
    write_final,
)
from .telemetry import INERT_AFTER, MetricsJsonl, SummaryProgress, TTTTelemetry, group_norms

LORA_TTT_WEIGHTS = "ttt_weights.safetensors"  # in a LoRA-mode checkpoint: the TTT parameters, beside the PEFT adapter


def __getattr__(name: str):
    if name == "TTT_WEIGHTS":  # the old name, easily confused with Moshi's ttt.safetensors (`families.moshi.TTT_WEIGHTS`)
        warnings.warn("inplace_ttt.train.trainer.TTT_WEIGHTS is deprecated; use LORA_TTT_WEIGHTS", FutureWarning, stacklevel=2)
        return LORA_TTT_WEIGHTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class RunParts:
    """What a model family hands the engine."""

    module: nn.Module  # what the Trainer trains: forward(**batch) returns a dict with "loss"
    layers: dict[int, InPlaceTTTMLP]  # its TTT layers
    train_dataset: Any
    eval_dataset: Any | None
    collate: Callable[[list[dict]], dict]
    save_final: Callable[[nn.Module, Path], None]  # writes the trained module (LoRA merged) as final/
    doctor: Callable[[nn.Module, dict, torch.optim.Optimizer], Any] | None  # the first-batch doctor (returns a `Report`)
    label_names: list[str] | None = None  # batch keys the loss reads, for evaluation (None: "labels")
    enable_checkpointing: Callable[[nn.Module], None] | None = None  # the family's own activation checkpointing (None: the Trainer's)
    processing_class: Any = None  # a tokenizer, saved with checkpoints
    use_cpu: bool | None = None  # None: train on the accelerator where there is one
    settings: dict | None = None  # the TTT settings saved with the model: the engine records each run's training there
    train_rows: tuple[torch.Tensor, ...] = ()  # the tensors of the training rows: their fingerprint lets --resume refuse other data
    callbacks: Sequence[TrainerCallback] = ()  # the family's own (the from-scratch family's summary, say)
    save_adapters: Callable[[nn.Module, Path], None] | None = None  # in LoRA mode, writes final/ from the unmerged module instead of save_final
    # the trainable parameters of the module (its mode applied) that the loss never reaches; None:
    # not known, and DDP looks for them every step (transformers' choice for a module not a PreTrainedModel)
    unreached: Callable[[nn.Module], list[str]] | None = None


class TTTTrainer(Trainer):
    """`Trainer` with TTT parameter groups (own learning rate, own clipping), float32 master
    weights for low-precision parameters, pre-clip telemetry and complete-only checkpoints.
    `args` is a `TrainConfig` (its `ttt_params_*` keys). transformers' own checkpoint rotation
    (inside its checkpoint save, before our COMPLETE mark, over any folder named checkpoint-*)
    stays off: the Trainer gets the arguments with ``save_total_limit`` null and
    `CompleteCheckpoints` rotates ours at that limit once the newest is complete."""

    def __init__(self, *args, telemetry: TTTTelemetry, **kwargs):
        # the Trainer sets `use_cache` to its own argument (False) for training: saved models keep the user's
        self.user_config = _cache_setting(kwargs.get("model"))
        arguments = kwargs["args"]
        self.keep_checkpoints = arguments.save_total_limit
        if self.keep_checkpoints is not None:
            kwargs["args"] = arguments.derive(save_total_limit=None)
        super().__init__(*args, **kwargs)
        if self.pop_callback(ProgressCallback) is not None:  # one readable line per log (the whole dict stays in the files)
            self.add_callback(SummaryProgress)
        self.add_callback(CompleteCheckpoints(self))
        self.add_callback(UnclippedGradients(self))
        self.telemetry = telemetry
        self.master_weights: MasterWeights | None = None
        self.resumed_from: str | None = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            self.master_weights = MasterWeights(opt_model)
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, p in opt_model.named_parameters():
                if p.requires_grad:
                    groups.setdefault((name in decay, is_ttt_param(name)), []).append(self.master_weights.stepped(p))
            param_groups = []
            for (decays, is_ttt), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
                if is_ttt and self.args.ttt_params_learning_rate is not None:
                    group["lr"] = self.args.ttt_params_learning_rate
                param_groups.append(group)
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = self.master_weights.attach(cls(param_groups, **kwargs))
        return self.optimizer

    def _clip_grad_norm(self, model):
        # private: transformers has no hook between the backward and its clipping, where the gradients must be checked, the telemetry read them and the TTT group be clipped apart
        self.read_gradients(model)
        if self.args.ttt_params_max_grad_norm is None:
            norm = super()._clip_grad_norm(model)
            self.telemetry.add("clip_scale", _clip_scale(float(norm), self.args.max_grad_norm))
            return norm
        return self._clip_groups(model, self.args.max_grad_norm)

    def unclipped_gradients(self, model) -> None:
        """The step's final gradients when no global clipping is configured (`UnclippedGradients`):
        the telemetry reads them, and the TTT group is still clipped at its own norm."""
        self.read_gradients(model)
        if self.args.ttt_params_max_grad_norm is not None:
            self._clip_groups(model, math.inf)

    def read_gradients(self, model) -> None:
        """A step's gradients before clipping: the run stops on a non-finite one (`train.nonfinite`;
        not under fp16 loss scaling, whose scaler skips its overflowing steps itself), and the
        telemetry reads their norms."""
        norms = group_norms(model.named_parameters())
        if self.accelerator.scaler is None:
            problem = nonfinite_gradient(model.named_parameters(), norms)
            if problem is not None:
                raise self.stop_error(problem)
        self.telemetry.record_gradients(norms)

    def stop_error(self, problem: str, step: int | None = None) -> RunError:
        """The run's one message for `problem` at `step` (default: the step being computed)."""
        rates = {"learning_rate": self.args.learning_rate, "ttt_params_learning_rate": self.args.ttt_params_learning_rate}
        return stopped(self.state.global_step + 1 if step is None else step, problem, self.args.output_dir, rates)

    def require_finite_weights(self) -> None:
        """Stop rather than save weights holding a NaN or an infinity."""
        problem = nonfinite_weights(self.model.named_parameters())
        if problem is not None:
            raise self.stop_error(problem, self.state.global_step)

    def _clip_groups(self, model, other_max: float) -> torch.Tensor:
        ttt_max = self.args.ttt_params_max_grad_norm
        ttt_norm, other_norm = clip_groups(model.named_parameters(), ttt_max, other_max)
        self.telemetry.add("ttt/clip_scale", _clip_scale(ttt_norm, ttt_max))
        self.telemetry.add("clip_scale", _clip_scale(other_norm, other_max))
        return torch.tensor(math.hypot(ttt_norm, other_norm))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            parts = {}
            if isinstance(outputs, dict):  # parts of the loss the module reports (Moshi's text and audio)
                parts = {k: float(v) for k, v in outputs.items() if k != "loss" and isinstance(v, torch.Tensor) and v.dim() == 0}
            problem = nonfinite_loss(loss, parts)
            if problem is not None:  # before its backward: nothing of this step reaches the weights
                raise self.stop_error(problem)
            for key, value in parts.items():
                self.telemetry.add(key, value)
            step = self.state.global_step + 1
            if self.telemetry.gain_due(step, self._logs_at(step), max(1, int(self.args.logging_steps))):
                with torch.no_grad(), ttt_switched_off(self.telemetry.layers.values()):
                    off = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
                self.telemetry.add("ttt/loss_gain", float(off) - float(loss))
        return (loss, outputs) if return_outputs else loss

    def _logs_at(self, step: int) -> bool:
        """Whether the Trainer logs after step `step`: every `logging_steps` and the last."""
        a = self.args
        return a.logging_strategy == "steps" and (step % max(1, int(a.logging_steps)) == 0 or step == self.state.max_steps)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.telemetry.record_forward()
        return loss

    def log(self, logs, start_time=None):
        if "loss" in logs:
            logs = {**logs, **self.telemetry.flush()}
            self._say_state(logs)
        super().log(logs, start_time)

    def _say_state(self, logs: dict) -> None:
        """Say once when TTT is inert or harmful (`TTTTelemetry.state`); inert only once the warmup is over."""
        step, a = self.state.global_step, self.args
        warmup = a.get_warmup_steps(self.state.max_steps) if self.state.max_steps > 0 else 0
        judge_inert = step >= max(INERT_AFTER, warmup) or step == self.state.max_steps
        rate = a.ttt_params_learning_rate if a.ttt_params_learning_rate is not None else a.learning_rate
        line = self.telemetry.state(logs, step, judge_inert, rate)
        if line is not None:
            warnings.warn(line, RuntimeWarning, stacklevel=2)
            if self.is_world_process_zero():
                print(line, flush=True)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        self.resumed_from = resume_from_checkpoint  # `CompleteCheckpoints` restores what transformers does not load
        if resume_from_checkpoint is not None and 0 < self.args.max_steps <= trained_steps(resume_from_checkpoint):
            return end_at_checkpoint(self, resume_from_checkpoint)  # killed before final/: nothing left to train
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """transformers' save, with the user's `use_cache`; a checkpoint's first write marks it ours
        and unfinished; in LoRA mode the TTT parameters go beside the adapter (PEFT saves the adapter only)."""
        output_dir = output_dir or self.args.output_dir
        self.require_finite_weights()
        if self.args.should_save and checkpoint_step(Path(output_dir)) is not None:
            mark_checkpoint_started(Path(output_dir))
        with self.user_settings():
            super().save_model(output_dir, _internal_call)
        if is_peft(self.model) and self.args.should_save:
            from safetensors.torch import save_file

            ttt = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if is_ttt_param(n)}
            save_file(ttt, os.path.join(output_dir, LORA_TTT_WEIGHTS))

    def _save(self, output_dir=None, state_dict=None):
        # private: the one place that chooses what a checkpoint of a module other than a PreTrainedModel holds (Moshi: what trained, not the frozen base)
        if state_dict is None and not isinstance(self.model, PreTrainedModel) and not is_peft(self.model):
            state_dict = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        super()._save(output_dir, state_dict)

    @contextlib.contextmanager
    def user_settings(self):
        """The model's config as the user's model had it (`use_cache`), for a block."""
        config = getattr(unwrap(self.model), "config", None)
        during = {k: getattr(config, k) for k in self.user_config}
        try:
            for key, value in self.user_config.items():
                setattr(config, key, value)
            yield
        finally:
            for key, value in during.items():
                setattr(config, key, value)

    def _issue_warnings_after_load(self, load_result):
        # private: transformers' only report of a loaded checkpoint's missing keys; ours hold what trained (and a tied head is one weight), so only a trained weight missing is news
        trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = [k for k in load_result.missing_keys if k in trained]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))


class CompleteCheckpoints(TrainerCallback):
    """Checkpoints that count only once complete: after transformers wrote one, the float32 master
    weights go in, then the COMPLETE mark, and only then do older checkpoints (of ours) go. On
    resume, it restores what transformers does not load: the TTT parameters beside a LoRA adapter
    and the master weights."""

    def __init__(self, trainer: TTTTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint = self.trainer.resumed_from
        if checkpoint is None:
            return
        extra = Path(checkpoint) / LORA_TTT_WEIGHTS
        if extra.is_file():
            from safetensors.torch import load_file

            params = dict(self.trainer.model.named_parameters())
            with torch.no_grad():
                for name, tensor in load_file(extra).items():
                    params[name].copy_(tensor)
        if self.trainer.master_weights:
            self.trainer.master_weights.load(checkpoint)

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        latest = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.trainer.master_weights:
            self.trainer.master_weights.save(latest)
        mark_checkpoint_complete(latest, state.global_step)
        rotate_checkpoints(latest.parent, self.trainer.keep_checkpoints, keep=state.best_model_checkpoint)


class UnclippedGradients(TrainerCallback):
    """Without global clipping (``max_grad_norm: 0``) transformers never calls its clipping: the
    gradients are final just before the optimizer step."""

    def __init__(self, trainer: TTTTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if args.max_grad_norm <= 0:
            self.trainer.unclipped_gradients(kwargs["model"])


class TrainingRecord(TrainerCallback):
    """Writes this run into the model's training record (`settings`, after the runs it already
    holds) at every step, so every save, checkpoint or final, says how far it trained."""

    def __init__(self, settings: dict, config):
        self.settings, self.config = settings, config
        self.earlier = split_training(settings)[1]

    def on_step_end(self, args, state, control, **kwargs):
        self.write(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(state.global_step)  # a resumed run with no step left still records itself

    def write(self, step: int) -> None:
        self.settings[TRAINING_KEY] = [*self.earlier, run_entry(self.config.train.mode, step, self.config.lora.target_modules)]


def _cache_setting(model) -> dict:
    """`use_cache` of a model's config, where it has one."""
    config = getattr(unwrap(model), "config", None) if model is not None else None
    return {"use_cache": config.use_cache} if hasattr(config, "use_cache") else {}


def clip_groups(named_parameters, ttt_max: float, other_max: float) -> tuple[float, float]:
    """Clip the TTT parameters' gradients at `ttt_max` and all the others' at `other_max`, each
    group on its own; returns both norms before clipping."""
    groups: tuple[list, list] = ([], [])
    for name, p in named_parameters:
        if p.grad is not None:
            groups[0 if is_ttt_param(name) else 1].append(p)
    ttt, other = (float(torch.nn.utils.clip_grad_norm_(g, limit)) if g else 0.0 for g, limit in zip(groups, (ttt_max, other_max)))
    return ttt, other


def _clip_scale(norm: float, max_norm: float) -> float:
    """The factor clipping at `max_norm` multiplies gradients of norm `norm` by."""
    return min(1.0, max_norm / (norm + 1e-6)) if math.isfinite(max_norm) else 1.0


def require_two_chunks(row_length: int, layers: dict) -> None:
    """Refuse rows shorter than two chunks of the TTT layers: nothing precedes a row's first chunk."""
    chunk = max(layer.chunk_size for layer in layers.values())
    if row_length < 2 * chunk:
        raise RunError(
            f"data.row_length={row_length} is shorter than two TTT chunks (chunk_size {chunk}): nothing "
            "precedes a row's first chunk, so TTT would be inert. Use rows of at least 2 chunks or a smaller chunk_size"
        )


def require_ttt_context(lengths: torch.Tensor, chunk: int, key: str, what: str, unit: str) -> None:
    """Refuse data whose documents (`lengths`, as the rows hold them) are all shorter than two TTT
    chunks: nothing precedes a document's first chunk, so TTT would get no gradient and do
    nothing. Warn when such documents hold most of the data."""
    short = lengths < 2 * chunk
    if bool(short.all()):
        raise RunError(
            f"{key}: every {what} holds fewer than two TTT chunks ({2 * chunk} {unit}; the longest has {int(lengths.max())}): "
            f"nothing precedes a {what}'s first chunk, so TTT would be inert. Use longer {what}s or a smaller chunk_size"
        )
    share = float(lengths[short].sum()) / float(lengths.sum())
    if share > 0.5:
        warnings.warn(f"{key}: {share:.0%} of the data is in {what}s shorter than two TTT chunks ({2 * chunk} {unit}), where TTT is inert", stacklevel=2)


def trainer_arguments(t: TrainConfig, parts: RunParts, module: nn.Module) -> TrainConfig:
    """The Trainer's arguments: the `train` section with what the model family decides (the batch
    keys the loss reads, the device, its own activation checkpointing, no evaluation without data,
    whether DDP must look for parameters without a gradient, unless the user said)."""
    changes: dict[str, Any] = {}
    if parts.unreached is not None and t.ddp_find_unused_parameters is None:
        changes["ddp_find_unused_parameters"] = bool(parts.unreached(module))
    if parts.label_names is not None:
        changes["label_names"] = parts.label_names
    if parts.use_cpu is not None:
        changes["use_cpu"] = parts.use_cpu
    if parts.enable_checkpointing is not None:
        changes.update(dict.fromkeys(CHECKPOINTING_KEYS, False))
    if parts.eval_dataset is None:
        changes.update(eval_strategy="no", eval_steps=None)
    return t.derive(**changes) if changes else t


# the run ---------------------------------------------------------------------------------------


def run_training(
    config, prepare: Callable[[Any], RunParts], resume: bool = False, allow_changes: bool = False, callbacks: Sequence[TrainerCallback] = ()
) -> Path:
    """Train as `config` says, the model and data coming from a family's `prepare`; returns the
    directory of the final model. Everything is validated (the run folder, config, model, data,
    the first-batch doctor) before the run folder is created or touched; then the run holds the
    folder's lock until it ends (`train.run_dir`). `callbacks`: more `TrainerCallback`s."""
    t = config.train
    out = Path(t.output_dir)
    resume_point(config, resume, allow_changes)  # refuses (or, for a finished run, says so) before anything loads
    set_seed(t.seed)  # conversion may draw random numbers (the diagonal W_target start)
    parts = prepare(config)
    try:
        module = apply_mode(parts.module, t.mode, config.lora, parts.layers)
    except ModeError as e:
        raise RunError(str(e)) from None
    if t.gradient_checkpointing and parts.enable_checkpointing is not None:
        parts.enable_checkpointing(module)
    telemetry = TTTTelemetry(parts.layers)
    record = [TrainingRecord(parts.settings, config)] if parts.settings is not None else []
    args = trainer_arguments(t, parts, module)
    with not_created_yet(out), named_folder_errors(out):
        trainer = TTTTrainer(
            model=module,
            args=args,
            train_dataset=parts.train_dataset,
            eval_dataset=parts.eval_dataset,
            data_collator=parts.collate,
            processing_class=parts.processing_class,
            callbacks=[MetricsJsonl(out / "metrics.jsonl"), *record, *parts.callbacks, *callbacks],
            telemetry=telemetry,
        )
    if t.doctor and parts.layers and parts.doctor is not None:
        trainer.create_optimizer()
        first = parts.collate([parts.train_dataset[i] for i in range(min(t.per_device_train_batch_size, len(parts.train_dataset)))])
        device = next(module.parameters()).device  # the Trainer has placed the model (on a GPU, say)
        report = parts.doctor(module, {k: v.to(device) for k, v in first.items()}, trainer.master_weights.seen_through(trainer.optimizer))
        if trainer.is_world_process_zero():
            print(f"doctor on the first batch:\n{report}", flush=True)
        if not report.ok:
            raise RunError(f"doctor found problems on the first batch; not training:\n{report}")
    try:
        checkpoint = start_run_dir(config, resume, allow_changes, parts.train_rows)
        telemetry.enable()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.require_finite_weights()
        if trainer.is_world_process_zero():
            with trainer.user_settings():
                if parts.save_adapters is not None and is_peft(module):
                    write_final(out, lambda folder: parts.save_adapters(module, folder))
                else:
                    write_final(out, lambda folder: parts.save_final(merged(module), folder))
    finally:
        release_run_dir(out)
    return out / "final"
