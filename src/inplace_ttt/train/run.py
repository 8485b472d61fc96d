"""`ittt train` (and `ittt pretrain`): the one place where a run's model family is chosen.

A run YAML says its family with ``model_type``: ``transformers`` (the default: a causal LM and
text documents), ``moshi`` (Kyutai's Moshi and conversation codes) or ``scratch`` (a small Llama
or Mistral and its tokenizer trained from nothing, what `ittt pretrain` runs). The family's
module holds its config schema (`CONFIG`, `schema`), settles what its model fixes (`settle`: a
trained checkpoint's own TTT settings) and loads the model and data (`prepare`); the shared
engine (`trainer.run_training`) trains them. A moshi-finetune config (a top-level ``run_dir``) is
read as a Moshi run (`moshi_finetune.translate`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from .config import MODEL_TYPES, build_config, read_config
from .moshi_finetune import is_moshi_finetune, translate
from .trainer import RunError, run_training

FAMILIES = MODEL_TYPES


def family(model_type: str) -> ModuleType:
    """The module of a model family: its config schema (`CONFIG`), `settle` and `prepare`."""
    if model_type == "transformers":
        from . import causal_lm

        return causal_lm
    if model_type == "scratch":
        from . import scratch

        return scratch
    if model_type == "moshi":
        try:
            from . import moshi
        except ImportError as e:  # an optional install
            raise RunError(f"model_type: moshi needs Kyutai's moshi package ({e}); install it with scripts/setup.sh --moshi") from None
        return moshi
    raise RunError(f"model_type must be one of {FAMILIES}; got {model_type!r}")


def schema(model_type: str) -> type:
    """The config schema (nested dataclasses, `train.config.RunBase`'s subclass) of a model family."""
    return family(model_type).CONFIG


def load_run_config(path: str | Path | None, overrides: list[str] = ()):
    """The run's config, validated as its family's schema."""
    data = read_config(path, overrides)
    if is_moshi_finetune(data):  # moshi-finetune's own YAML (its `run_dir`), with an optional ttt section
        data = translate(data)
    return build_config(schema(data.get("model_type", "transformers")), data)


def train(config, resume: bool = False, allow_changes: bool = False) -> Path:
    """Run training as configured; returns the directory of the final model. `resume` continues
    the run in `train.output_dir` (`allow_changes`: with settings other than its config.yaml's)."""
    fam = family(config.model_type)
    try:
        return run_training(fam.settle(config), fam.prepare, resume, allow_changes)
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group before the interpreter exits: a gloo group torn
    down at exit aborts the process now and then ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
