"""The run configuration of `ittt train` (and `ittt pretrain`): one YAML file, overridable from the command line.

Sections mirror what a user sets: `model`, `ttt` (a `TTTConfig`), `data`, `train`, `lora`. `RunBase`
holds what every model family shares: the `train` section is transformers' own `TrainingArguments`
(`TrainConfig`, any of its keys works) and `lora` the PEFT settings; a family's subclass gives its
`model` and `data` sections and its defaults (`RunConfig` here for a transformers causal LM,
`train.moshi.MoshiRunConfig`, `train.scratch.ScratchRunConfig`; `train.run.schema` picks one by
``model_type``). Every field carries ``metadata["help"]`` and, where only some values are allowed,
``metadata["choices"]``. Unknown keys are errors that list the valid ones, values are converted to
the field's type (``--train.learning_rate 1e-5`` works though YAML reads ``1e-5`` as a string), and
renamed keys (`RENAMED`) still read, with a FutureWarning.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import inspect
import math
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

from ..config import TTTConfig

MODES = ("full", "ttt_only", "lora")
MODEL_TYPES = ("transformers", "moshi", "scratch")
WORKERS_PER_CORE = 4  # train.dataloader_num_workers beyond this many per core only adds processes
ROW_LENGTH_MAX = 1 << 20  # tokens (or Moshi steps) per row: a million is past any model's context, and one row's activations must fit memory
GIVEN = "_given"  # where a built section keeps the keys it was given
DECLARED = "_declared"  # where a TrainConfig keeps its values as given, before transformers normalises them
_TRANSFORMERS = {f.name: f for f in dataclasses.fields(TrainingArguments)}
# transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` and keeps both names
CHECKPOINTING_KEYS = tuple(k for k in ("activation_checkpointing", "gradient_checkpointing") if k in _TRANSFORMERS)


def meta(text: str, choices: tuple = (), path: bool = False) -> dict[str, Any]:
    """A field's metadata: its help, the values allowed where only some are, and whether it holds
    paths (a leading ``~`` is then expanded, as a shell would)."""
    return {"help": text, **({"choices": choices} if choices else {}), **({"path": True} if path else {})}


def check_row_length(row_length: int) -> None:
    """`data.row_length` in [2, `ROW_LENGTH_MAX`]: two TTT chunks at least, one row's memory at most."""
    if not 2 <= row_length <= ROW_LENGTH_MAX:
        raise ValueError(f"data.row_length must be in [2, {ROW_LENGTH_MAX}] (one row is held in memory at once); got {row_length}")


def _default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def redefault(base: type, name: str, default: Any, note: str, choices: tuple = (), path: bool = False) -> Any:
    """`base`'s field `name` with another default: its help with `note` added."""
    theirs = next(f for f in dataclasses.fields(base) if f.name == name)
    metadata = {
        **theirs.metadata,
        "help": f"{theirs.metadata['help']} {note}".strip(),
        **({"choices": choices} if choices else {}),
        **({"path": True} if path else {}),
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _ours(name: str, default: Any, why: str, choices: tuple = (), path: bool = False) -> Any:
    """A `TrainingArguments` field with our default, and why ours differs from transformers'."""
    return redefault(TrainingArguments, name, default, f"Default here {default!r}: {why} (transformers: {_default_of(_TRANSFORMERS[name])!r}).", choices, path)


@dataclass
class DataConfig:
    """Text documents, tokenized with the model's tokenizer and packed into rows (`train.data`)."""

    train: list[str] = field(default_factory=list, metadata=meta("training documents: .txt / .jsonl / .parquet files, folders or glob patterns", path=True))
    eval: list[str] = field(default_factory=list, metadata=meta("held-out documents, evaluated every train.eval_steps", path=True))
    text_field: str = field(default="text", metadata=meta("the field of .jsonl / .parquet records that holds the text"))
    txt_split: str = field(
        default="file", metadata=meta("how .txt files split into documents: one per file, or one per blank-line block", ("file", "blank_line"))
    )
    row_length: int = field(default=4096, metadata=meta("tokens per packed row (at least two TTT chunks)"))
    add_eos: bool = field(default=True, metadata=meta("append the tokenizer's EOS to every document"))

    def __post_init__(self) -> None:
        if self.txt_split not in ("file", "blank_line"):
            raise ValueError(f"data.txt_split must be 'file' or 'blank_line'; got {self.txt_split!r}")
        check_row_length(self.row_length)


@dataclass
class TrainConfig(TrainingArguments):
    """The `train` section: transformers' `TrainingArguments`, so any of its keys works, with our
    defaults where they differ (each field's help says why) and the keys In-Place TTT adds (`mode`,
    `ttt_params_*`, `warmup_ratio`, `doctor`). A built one is settled: it keeps the values it was
    given (`record`, `derive`) beside the ones transformers normalised."""

    output_dir: str = _ours("output_dir", "runs/ittt", "the run folder", path=True)
    learning_rate: float = _ours("learning_rate", 5e-6, "the released recipe's")
    weight_decay: float = _ours("weight_decay", 0.1, "the released recipe's")
    lr_scheduler_type: str = _ours("lr_scheduler_type", "cosine", "the released recipe's", tuple(s.value for s in SchedulerType))
    num_train_epochs: float = _ours("num_train_epochs", 1.0, "one pass over the data")
    per_device_train_batch_size: int = _ours("per_device_train_batch_size", 1, "a row is long")
    per_device_eval_batch_size: int = _ours("per_device_eval_batch_size", 1, "a row is long")
    bf16: bool | str = _ours("bf16", "auto", "'auto' is bf16 where the accelerator supports it", ("auto", True, False))
    use_cpu: bool | None = _ours("use_cpu", None, "null is the CPU where there is no CUDA device")
    logging_steps: int = _ours("logging_steps", 10, "a count of steps here, not a ratio")
    save_steps: int = _ours("save_steps", 500, "a count of steps here, not a ratio")
    eval_steps: int | None = _ours("eval_steps", None, "a count of steps here; set, it turns evaluation on (eval_strategy 'steps')")
    seed: int = _ours("seed", 0, "also the data order's seed unless data_seed is set")
    report_to: list[str] = _ours("report_to", ["tensorboard"], "TensorBoard events in the run folder")
    remove_unused_columns: bool = _ours("remove_unused_columns", False, "a batch holds only what the model reads")
    logging_nan_inf_filter: bool = _ours(
        "logging_nan_inf_filter", False, "a NaN loss is logged as it is (null in metrics.jsonl), never replaced; in training it stops the run"
    )
    prediction_loss_only: bool = _ours("prediction_loss_only", True, "evaluation is the loss: gathering logits of long rows would only cost memory")
    mode: str = field(
        default="full",
        metadata=meta(
            "what trains: every parameter; the TTT parameters and the TTT layers' down projections; or LoRA on lora.target_modules plus the TTT parameters",
            MODES,
        ),
    )
    ttt_params_learning_rate: float | None = field(
        default=None,
        metadata=meta("AdamW's learning rate for the TTT parameters (conv, W_target); null: learning_rate. Not the fast weights' eta (ttt.ttt_lr)"),
    )
    ttt_params_max_grad_norm: float | None = field(
        default=1.0,
        metadata=meta(
            "clip the TTT parameters' gradients as their own group at this norm, the others at max_grad_norm; null: inside the one "
            "global clip, which at the warm start they dominate (measured: docs/training.md, Clipping)"
        ),
    )
    warmup_ratio: float = field(default=0.02, metadata=meta("share of the steps spent warming up, in [0, 1); a warmup_steps above 0 wins"))
    doctor: bool = field(default=True, metadata=meta("run the doctor on the first batch (with the real optimizer) and stop the run on a failed check"))

    def __post_init__(self) -> None:
        if isinstance(self.bf16, str) and self.bf16.lower() in ("true", "false"):  # the strings earlier releases took
            self.bf16 = self.bf16.lower() == "true"
        self.__dict__[DECLARED] = copy.deepcopy({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init})
        self._check()
        if self.bf16 == "auto":
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.use_cpu is None:
            self.use_cpu = not torch.cuda.is_available()
        if self.data_seed is None:
            self.data_seed = self.seed
        if not self.warmup_steps:
            self.warmup_steps = self.warmup_ratio  # transformers reads a number below 1 as a share of the steps
        if self.eval_steps is not None and self.eval_strategy == "no":
            self.eval_strategy = "steps"
        if self.ddp_backend is None and self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.ddp_backend = "gloo"
        try:
            super().__post_init__()
        # transformers' own checks, which do not name the section; a package a key needs (deepspeed); a file a key names (accelerator_config)
        except (ValueError, TypeError, ImportError, OSError) as e:
            raise ValueError(f"train: {e}") from None

    def _check(self) -> None:
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
        most_workers = WORKERS_PER_CORE * (os.cpu_count() or 1)
        if not 0 <= self.dataloader_num_workers <= most_workers:
            raise ValueError(
                f"train.dataloader_num_workers must be in [0, {most_workers}] ({WORKERS_PER_CORE} per core of this machine's "
                f"{os.cpu_count() or 1}; each worker is a process); got {self.dataloader_num_workers}"
            )
        for name in ("learning_rate", "weight_decay", "max_grad_norm") + (("ttt_params_learning_rate",) if self.ttt_params_learning_rate is not None else ()):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.{name} must be a finite number >= 0; got {value}")
        if self.fsdp_config is not None and not self.fsdp:
            raise ValueError(
                "train.fsdp_config is set but train.fsdp is not, so it would be ignored: set train.fsdp (e.g. 'full_shard auto_wrap') or drop fsdp_config"
            )
        for name in ("bf16", "lr_scheduler_type"):
            choices = _choices(type(self), name)
            if getattr(self, name) not in choices:
                raise ValueError(f"train.{name} must be one of {choices}; got {getattr(self, name)!r}")
        self._check_scheduler_kwargs()
        for name in ("adam_beta1", "adam_beta2", "label_smoothing_factor"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be in [0, 1); got {getattr(self, name)}")
        if not (math.isfinite(self.adam_epsilon) and self.adam_epsilon > 0):
            raise ValueError(f"train.adam_epsilon must be a finite number > 0; got {self.adam_epsilon}")
        if self.eval_accumulation_steps is not None and self.eval_accumulation_steps < 1:
            raise ValueError(f"train.eval_accumulation_steps must be null or >= 1; got {self.eval_accumulation_steps}")
        if self.neftune_noise_alpha is not None and not (math.isfinite(self.neftune_noise_alpha) and self.neftune_noise_alpha >= 0):
            raise ValueError(f"train.neftune_noise_alpha must be null or a finite number >= 0; got {self.neftune_noise_alpha}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"train.seed must be in [0, 2**32) (numpy's seeds); got {self.seed}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.warmup_ratio must be in [0, 1) (a share of the steps; use train.warmup_steps for a count); got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.ttt_params_max_grad_norm is not None and not (math.isfinite(self.ttt_params_max_grad_norm) and self.ttt_params_max_grad_norm > 0):
            raise ValueError(f"train.ttt_params_max_grad_norm must be None or a finite number > 0; got {self.ttt_params_max_grad_norm}")

    def _check_scheduler_kwargs(self) -> None:
        """`lr_scheduler_kwargs` must be arguments of the chosen schedule's function (transformers
        passes them on only when the schedule is built, after the run folder is made)."""
        from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

        given = self.lr_scheduler_kwargs
        if given is None or given == {}:
            return
        if not isinstance(given, dict):
            raise ValueError(f"train.lr_scheduler_kwargs must be a mapping of the schedule's arguments; got {given!r}")
        parameters = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(self.lr_scheduler_type)]).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return  # the schedule takes any keyword (reduce_lr_on_plateau passes them to torch)
        allowed = sorted(set(parameters) - {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"})
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(f"train.lr_scheduler_kwargs: {unknown} are not arguments of the {self.lr_scheduler_type!r} schedule; it takes {allowed}")

    @property
    def declared(self) -> dict[str, Any]:
        """Every field's value as given (defaults included), before transformers normalised it."""
        return self.__dict__[DECLARED]

    def derive(self, **changes: Any) -> TrainConfig:
        """A new section from the values as given, with `changes`: `dataclasses.replace`, without
        feeding transformers its own normalised values back."""
        return type(self)(**{**self.declared, **changes})

    def record(self, every_key: bool = False) -> dict[str, Any]:
        """The section for config.yaml: our keys and every key given another value than transformers'
        default (`every_key`: all of them, to compare two runs)."""
        return _declared_record(type(self), self.declared, every_key)


def _declared_record(cls: type[TrainConfig], declared: dict[str, Any], every_key: bool) -> dict[str, Any]:
    def plain(value):
        return value.value if isinstance(value, enum.Enum) else value

    def kept(f: dataclasses.Field) -> bool:
        theirs = _TRANSFORMERS.get(f.name)
        if every_key or theirs is None or f is not theirs:
            return True
        return plain(declared[f.name]) != plain(_default_of(theirs))

    return {f.name: plain(declared[f.name]) for f in dataclasses.fields(cls) if f.init and kept(f)}


def _choices(cls: type, name: str) -> tuple:
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


@dataclass
class LoraSettings:
    r: int = field(default=16, metadata=meta("LoRA rank"))
    alpha: float = field(default=32, metadata=meta("LoRA alpha (the update is scaled by alpha / r)"))
    dropout: float = field(default=0.0, metadata=meta("dropout on the LoRA path"))
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata=meta("module names PEFT wraps (never the TTT parameters)")
    )

    def __post_init__(self) -> None:
        """Checked here, under this section's names (PEFT's own errors name its arguments, not ours)."""
        if self.r < 1:
            raise ValueError(f"lora.r must be an integer >= 1; got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0; got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1); got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")


# the keys of earlier releases, per section class (a subclass's section inherits them): read as the new key, with a FutureWarning
RENAMED: dict[type, dict[str, str]] = {
    TTTConfig: {"target": "target_source"},
    # `ttt_learning_rate` read as if it were the fast weights' eta (`ttt.ttt_lr`); it is the optimizer's rate for the TTT parameters
    TrainConfig: {
        "ttt_learning_rate": "ttt_params_learning_rate",
        "ttt_max_grad_norm": "ttt_params_max_grad_norm",
        "batch_size": "per_device_train_batch_size",
    },
}


@dataclass
class RunBase:
    """What a run config holds for every model family; a family's subclass sets `MODEL_TYPE`, its
    `model` and `data` sections and its defaults."""

    MODEL_TYPE: ClassVar[str]

    model_type: str = field(default="transformers", metadata=meta("the model family, which decides the model and data sections", MODEL_TYPES))
    model: Any = field(default=None, metadata=meta("the model (each family's)"))
    ttt: TTTConfig | None = field(default_factory=TTTConfig, metadata=meta("the In-Place TTT settings (TTTConfig's fields); null: train without TTT"))
    data: Any = field(default=None, metadata=meta("the data (each family's)"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=meta("the engine's settings: transformers' TrainingArguments and ours"))
    lora: LoraSettings = field(default_factory=LoraSettings, metadata=meta("LoRA settings for train.mode lora"))

    def __post_init__(self) -> None:
        if self.model_type != self.MODEL_TYPE:
            raise ValueError(f"model_type must be {self.MODEL_TYPE!r} for this recipe; got {self.model_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _section_record(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _section_record(value: Any, every_key: bool = False) -> Any:
    if isinstance(value, TrainConfig):
        return value.record(every_key)
    if isinstance(value, TTTConfig):
        return value.to_dict()
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@dataclass
class RunConfig(RunBase):
    """A run of a transformers causal LM."""

    MODEL_TYPE: ClassVar[str] = "transformers"

    model: str = field(default="", metadata=meta("the model: a directory or hub id (a base model, or a saved In-Place TTT model)", path=True))
    data: DataConfig = field(default_factory=DataConfig, metadata=meta("text documents packed into rows"))
    gguf_file: str | None = field(default=None, metadata=meta("a GGUF checkpoint in `model` (a directory): read dequantized to float"))
    tokenizer: str | None = field(default=None, metadata=meta("the tokenizer's directory or hub id; null: the model's", path=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("model: give a model directory or hub id")
        if not self.data.train:
            raise ValueError("data.train: give at least one file or folder of training documents")


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


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false are booleans. YAML 1.1 also
    reads yes/no/on/off (and y/n) as booleans, which turned ``--train.save_strategy no`` (the
    value transformers expects) into ``False``; such words now stay words, and a bool field still
    takes yes/no/on/off (`convert_value`). A key given twice in one mapping is refused (YAML
    forbids it; PyYAML keeps the last silently, which dropped a whole first ``ttt:`` section). No
    library offers this loader; it is a few lines here."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _parse_yaml(text: str, where: str) -> Any:
    """YAML text, or one message naming where it came from and the line of the mistake."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), schema: type = RunConfig):
    """Read the YAML file (if any), apply ``--section.key value`` overrides, validate as `schema`
    (a dataclass of sections: `train.run.schema(model_type)` gives a run's)."""
    return build_config(schema, read_config(path, overrides))


def build_config(schema: type, data: dict[str, Any]):
    """Validate a mapping as `schema`, naming any unknown key or wrong value. A value that already
    is the section (a built `TrainConfig`, say) is taken as it is."""
    return _build(schema, data, "")


def _build(cls, data: Any, where: str):
    data = _fields(cls, data, where)
    built = cls(**data)
    built.__dict__[GIVEN] = frozenset(data)
    return built


def _fields(cls, data: Any, where: str) -> dict[str, Any]:
    """The given keys of a section (renamed keys read as the new ones), converted to their fields' types."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    for old, new in (pair for base in cls.__mro__ for pair in RENAMED.get(base, {}).items()):
        if old in data:
            if new in data:
                raise ValueError(f"{where}{old} is the old name of {where}{new}: give one of them")
            warnings.warn(f"{where}{old} is deprecated; use {where}{new}", FutureWarning, stacklevel=4)
            data = {(new if k == old else k): v for k, v in data.items()}
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {[where + k for k in unknown]}; valid keys here: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    holds_paths = {f.name for f in dataclasses.fields(cls) if f.metadata.get("path")}
    return {name: _expanded(convert_value(hints[name], value, f"{where}{name}"), name in holds_paths) for name, value in data.items()}


def _expanded(value: Any, holds_paths: bool) -> Any:
    """A path field's value with a leading ``~`` expanded to the home folder, as a shell would."""
    if not holds_paths:
        return value
    if isinstance(value, list):
        return [os.path.expanduser(v) if isinstance(v, str) else v for v in value]
    return os.path.expanduser(value) if isinstance(value, str) else value


def given_keys(section) -> frozenset[str] | None:
    """The keys a section was built from (`build_config`), None for one built in code."""
    return getattr(section, GIVEN, None)


BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def convert_value(tp, value, where: str):
    """Coerce a YAML value to a field's annotated type, naming the field when it cannot."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        named = next((a for a in options if isinstance(a, type) and issubclass(a, enum.Enum)), None)
        if named is not None and isinstance(value, str):  # transformers' `SomeEnum | str` fields
            return convert_value(named, value, where)
        if bool in options and isinstance(value, str) and value.lower() in BOOL_WORDS:  # `bool | str` (bf16: auto | yes | no)
            return BOOL_WORDS[value.lower()]
        if type(value) in options and not isinstance(value, float):  # already of one of the types (a YAML bool for `bool | str`); a float is checked finite
            return value
        if len(options) == 1:  # Optional[X]: X's own error names the problem
            return convert_value(options[0], value, where)
        for option in options:
            try:
                return convert_value(option, value, where)
            except (TypeError, ValueError):
                pass
        raise ValueError(f"{where}: {value!r} fits none of {options}")
    if origin is list:
        if isinstance(value, str):  # one item given alone, as `--data.train docs/` gives it
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list of {args[0].__name__} (or one {args[0].__name__}), got {value!r}")
        return [convert_value(args[0], v, where) for v in value]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = tuple(e.value for e in tp)
        if value not in allowed:
            raise ValueError(f"{where} must be one of {allowed}; got {value!r}")
        return value
    if tp is float:
        return _finite(value, where)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in BOOL_WORDS:
                return BOOL_WORDS[value.lower()]
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            converted = int(value)
            if isinstance(value, float) and value != converted:
                raise ValueError
            return converted
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError, OverflowError):  # int(.inf) is an OverflowError
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value  # Any, enums, mappings: the section's own checks judge them


def _finite(value: Any, where: str) -> float:
    """A float field's value: a finite number (YAML's .inf and .nan, or a string of them, are refused by name)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected float, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} must be a finite number; got {value!r}")
    return number


def dump_config(config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def comparable(config) -> dict[str, Any]:
    """A config's record with every key of its `train` section: two runs' settings side by side."""
    return {**config.to_dict(), "train": _section_record(config.train, every_key=True)}


def comparable_saved(schema: type, data: dict[str, Any], live: TrainConfig) -> dict[str, Any]:
    """`comparable` of a saved config.yaml's mapping, read as `schema`. Its `train` section is read
    without building a `TrainingArguments`, whose construction resets the accelerator state of a
    live Trainer (`live`, the running config's section, stands in while the rest is validated)."""
    train_type = typing.get_type_hints(schema)["train"]
    declared = {f.name: _default_of(f) for f in dataclasses.fields(train_type) if f.init}
    declared.update(_fields(train_type, data.get("train") or {}, "train."))
    rest = build_config(schema, {**data, "train": live})
    return {**rest.to_dict(), "train": _declared_record(train_type, declared, every_key=True)}


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
