"""The run configuration of `ittt train`: one YAML file, overridable from the command line.

Sections mirror what a user sets: `model`, `ttt` (a `TTTConfig`), `data`, `train`, `lora`.
`TrainConfig` (the engine's settings) and `LoraSettings` are shared by every model family;
`RunConfig` is a transformers run, `train.moshi.MoshiRunConfig` a Moshi run (which one a file
is, `model_type` says: `train.run` reads it). Unknown keys are errors that list the valid
ones, and values are converted to the field's type, so ``--train.learning_rate 1e-5`` works
even though YAML reads ``1e-5`` as a string.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..config import TTTConfig

MODES = ("full", "ttt_only", "lora")
GIVEN = "_given"  # where a built section keeps the keys it was given


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    text_field: str = "text"
    txt_split: str = "file"  # "file": one document per .txt file; "blank_line": per blank-line block
    row_length: int = 4096
    add_eos: bool = True

    def __post_init__(self) -> None:
        if self.txt_split not in ("file", "blank_line"):
            raise ValueError(f"data.txt_split must be 'file' or 'blank_line'; got {self.txt_split!r}")
        if self.row_length < 2:
            raise ValueError(f"data.row_length must be >= 2; got {self.row_length}")


@dataclass
class TrainConfig:
    """The engine's settings, the same for every model family (most pass through to transformers'
    `TrainingArguments`)."""

    # renamed keys, accepted with a FutureWarning for one release: `ttt_learning_rate` read as if it
    # were the fast weights' eta (`ttt.ttt_lr`); it is the optimizer's rate for the TTT parameters
    ALIASES: ClassVar[dict[str, str]] = {
        "ttt_learning_rate": "ttt_params_learning_rate",
        "ttt_max_grad_norm": "ttt_params_max_grad_norm",
    }

    output_dir: str = "runs/ittt"
    mode: str = "full"
    learning_rate: float = 5e-6
    ttt_params_learning_rate: float | None = None  # AdamW's rate for the TTT parameters (conv, W_target); None: learning_rate
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0  # global clipping of the gradients (of the non-TTT parameters if ttt_params_max_grad_norm is set)
    # the TTT parameters' gradients clipped as their own group at this norm (None: inside the global
    # clip, where at the warm start they dominate it); measured: docs/training.md "Clipping"
    ttt_params_max_grad_norm: float | None = 1.0
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.02  # share of the steps spent warming up, in [0, 1)
    warmup_steps: int = 0  # if > 0, the number of warmup steps (instead of warmup_ratio)
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    bf16: str = "auto"  # "auto": where the accelerator supports it; "true" / "false"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = None
    eval_steps: int | None = None
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    doctor: bool = True
    dataloader_num_workers: int = 0
    fsdp: str | None = None  # e.g. "full_shard auto_wrap" (launch with torchrun)
    fsdp_config: str | None = None  # path to a transformers FSDP JSON config

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.mode must be one of {MODES}; got {self.mode!r}")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, or -1 to train for train.num_train_epochs; got {self.max_steps}")
        if not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise ValueError(f"train.num_train_epochs must be a finite number > 0; got {self.num_train_epochs}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1; got {getattr(self, name)}")
        for name in ("save_total_limit", "eval_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be null or >= 1; got {getattr(self, name)}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"train.dataloader_num_workers must be >= 0; got {self.dataloader_num_workers}")
        for name in ("learning_rate", "weight_decay", "max_grad_norm") + (("ttt_params_learning_rate",) if self.ttt_params_learning_rate is not None else ()):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.{name} must be a finite number >= 0; got {value}")
        if self.fsdp_config is not None and not self.fsdp:
            raise ValueError(
                "train.fsdp_config is set but train.fsdp is not, so it would be ignored: set train.fsdp (e.g. 'full_shard auto_wrap') or drop fsdp_config"
            )
        if self.bf16 not in ("auto", "true", "false"):
            raise ValueError(f"train.bf16 must be 'auto', 'true' or 'false'; got {self.bf16!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1) (a share of the steps; use train.warmup_steps for a count); got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.ttt_params_max_grad_norm is not None and not (math.isfinite(self.ttt_params_max_grad_norm) and self.ttt_params_max_grad_norm > 0):
            raise ValueError(f"train.ttt_params_max_grad_norm must be None or a finite number > 0; got {self.ttt_params_max_grad_norm}")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class RunConfig:
    """A run of a transformers causal LM."""

    model_type: str = "transformers"
    model: str = ""
    gguf_file: str | None = None  # a GGUF checkpoint in `model` (a directory): read dequantized to float
    tokenizer: str | None = None
    ttt: TTTConfig | None = field(default_factory=TTTConfig)  # None (`ttt: null`): train without TTT, the fair baseline
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if self.model_type != "transformers":
            raise ValueError(f"model_type must be 'transformers' for this recipe; got {self.model_type!r}")
        if not self.model:
            raise ValueError("model: give a model directory or hub id")
        if not self.data.train:
            raise ValueError("data.train: give at least one file or folder of training documents")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ttt"] = self.ttt.to_dict() if self.ttt is not None else None
        return d


def read_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """The YAML file's mapping (if any) with ``--section.key value`` overrides applied, not yet validated."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file not found: {p}")
        data = _parse_yaml(p.read_text(), str(p)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of sections, got {type(data).__name__}")
    if len(overrides) % 2:
        raise ValueError(f"overrides come in pairs '--key value'; got {list(overrides)}")
    for key, value in zip(overrides[::2], overrides[1::2]):
        if not key.startswith("--"):
            raise ValueError(f"expected an option like --train.learning_rate, got {key!r}")
        *parents, leaf = key[2:].replace("-", "_").split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part} is not a section")
        node[leaf] = _parse_yaml(value, key)
    return data


def _parse_yaml(text: str, where: str) -> Any:
    """YAML text, or one message naming where it came from and the line of the mistake."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), schema: type = RunConfig):
    """Read the YAML file (if any), apply ``--section.key value`` overrides, validate as `schema`
    (a dataclass of sections: `RunConfig` for a transformers run, `PretrainConfig` for `ittt pretrain`)."""
    return build_config(schema, read_config(path, overrides))


def build_config(schema: type, data: dict[str, Any]):
    """Validate a mapping as `schema`, naming any unknown key or wrong value."""
    return _build(schema, data, "")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for old, new in getattr(cls, "ALIASES", {}).items():  # renamed keys, accepted for one release
        if old in data:
            if new in data:
                raise ValueError(f"{where}{old} is the old name of {where}{new}: give one of them")
            warnings.warn(f"{where}{old} is deprecated; use {where}{new}", FutureWarning, stacklevel=2)
            data = {(new if k == old else k): v for k, v in data.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {[where + k for k in unknown]}; valid keys here: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}{name}") for name, value in data.items()}
    built = cls(**kwargs)
    built.__dict__[GIVEN] = frozenset(data)
    return built


def given_keys(section) -> frozenset[str] | None:
    """The keys a section was built from (`build_config`), None for one built in code."""
    return getattr(section, GIVEN, None)


def _convert(tp, value, where: str):
    """Coerce a YAML value to a field's annotated type, naming the field when it cannot."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the problem
            return _convert(options[0], value, where)
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} fits none of {options}")
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_convert(args[0], v, where) for v in items]
    if tp is typing.Any:
        return value
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp in (int, float):
            if isinstance(value, bool):
                raise ValueError
            converted = tp(value)
            if tp is int and isinstance(value, float) and value != converted:
                raise ValueError
            return converted
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def dump_config(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def adopt_ttt(given: TTTConfig, saved: TTTConfig, num_layers: int | None, what: str) -> TTTConfig:
    """A trained checkpoint's TTT settings (`saved`; `what` names the checkpoint) for a run whose
    `ttt` section is `given`: a run continues a trained model with its settings, so a key given in
    the section that differs from them is refused (a section built in code gives no keys)."""

    def value(config: TTTConfig, key: str):
        return config.layer_indices(num_layers) if key == "layers" and num_layers is not None else getattr(config, key)

    differ = [f"ttt.{k} {value(given, k)!r} (checkpoint: {value(saved, k)!r})" for k in sorted(given_keys(given) or ()) if value(given, k) != value(saved, k)]
    if differ:
        raise ValueError(
            f"{what} is a trained In-Place TTT checkpoint, which goes on with its own TTT settings, but the run's ttt section "
            f"differs: {', '.join(differ)}. Leave those keys out of the ttt section, or give the checkpoint's values"
        )
    return saved
