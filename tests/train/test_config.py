import copy
import dataclasses
import math
import random
import typing

import pytest
import yaml

from inplace_ttt.train.config import load_config
from inplace_ttt.train.run import load_run_config, schema


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = "model: some/model\ndata:\n  train: [docs]\n"


def test_yaml_and_overrides_with_types(tmp_path):
    path = write(tmp_path, BASE + "ttt:\n  chunk_size: 512\ntrain:\n  mode: lora\n")
    c = load_config(path, ["--train.learning_rate", "1e-5", "--ttt.layers", "[0, 3]", "--train.bf16", "true", "--lora.r", "8"])
    assert c.train.learning_rate == 1e-5 and isinstance(c.train.learning_rate, float)
    assert c.ttt.chunk_size == 512 and c.ttt.layers == (0, 3)
    assert c.train.bf16 is True and c.train.mode == "lora" and c.lora.r == 8
    assert c.data.train == ["docs"] and c.train.ttt_params_learning_rate is None


@pytest.mark.parametrize("where", ["file", "override"])
def test_no_is_a_word_where_a_word_is_expected_and_false_where_a_bool_is(tmp_path, where):
    """YAML 1.1 reads no/yes/on/off as booleans: `save_strategy: no` (transformers' value) became False
    and was refused as 'false is not a valid SaveStrategy'. Only true/false are booleans now; a bool
    field still takes the words."""
    settings = {"train.save_strategy": "no", "train.bf16": "no", "train.gradient_checkpointing": "on", "ttt.clip_tau": "null"}
    if where == "file":
        sections: dict = {}
        for key, value in settings.items():
            section, leaf = key.split(".")
            sections.setdefault(section, []).append(f"  {leaf}: {value}")
        c = load_config(write(tmp_path, BASE + "".join(f"{s}:\n" + "\n".join(lines) + "\n" for s, lines in sections.items())))
    else:
        c = load_config(write(tmp_path, BASE), [x for k, v in settings.items() for x in (f"--{k}", v)])
    assert c.train.save_strategy == "no" and c.train.bf16 is False and c.train.gradient_checkpointing is True and c.ttt.clip_tau is None


def test_the_train_section_is_transformers_training_arguments(tmp_path):
    """Any `TrainingArguments` key works; ours keep their defaults; config.yaml records the values as given."""
    import yaml
    from transformers import TrainingArguments

    from inplace_ttt.train.config import dump_config

    c = load_config(write(tmp_path, BASE), ["--train.adam_beta2", "0.95", "--train.optim", "adafactor", "--train.warmup_ratio", "0.1"])
    assert isinstance(c.train, TrainingArguments) and c.train.adam_beta2 == 0.95 and c.train.optim == "adafactor"
    assert (c.train.learning_rate, c.train.weight_decay, c.train.seed, c.train.report_to) == (5e-6, 0.1, 0, ["tensorboard"])  # ours, not transformers'
    assert c.train.warmup_steps == 0.1  # transformers 5 reads a warmup_steps below 1 as a share of the steps
    saved = yaml.safe_load(dump_config(c))["train"]
    assert saved["adam_beta2"] == 0.95 and saved["warmup_ratio"] == 0.1 and saved["bf16"] == "auto"
    assert "adam_epsilon" not in saved and "warmup_steps" not in saved  # transformers' keys at transformers' defaults stay out of the record
    with pytest.raises(ValueError, match=r"train.lr_scheduler_type must be one of \(.*'cosine'.*\); got 'cosinus'"):
        load_config(write(tmp_path, BASE), ["--train.lr_scheduler_type", "cosinus"])
    with pytest.raises(ValueError, match=r"^train.optim must be one of \('adamw_torch', .*'sgd', .*\); got 'sgdd'"):  # transformers' enums
        load_config(write(tmp_path, BASE), ["--train.optim", "sgdd"])
    with pytest.raises(ValueError, match=r"^train: --load_best_model_at_end requires the save and eval strategy to match"):  # transformers' own checks
        load_config(write(tmp_path, BASE), ["--train.load_best_model_at_end", "true", "--train.save_strategy", "epoch"])


def test_every_field_of_every_schema_has_help_and_choices_as_a_tuple():
    """What `ittt train --help` walks. transformers' own fields keep transformers' metadata (a few
    give their choices as a list or dict keys); ours give a tuple."""
    import dataclasses

    from transformers import TrainingArguments

    from inplace_ttt.train.run import FAMILIES, schema

    theirs = {f.name: f for f in dataclasses.fields(TrainingArguments)}

    def walk(cls, where):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{where}{f.name}"
            if f is not theirs.get(f.name):
                assert isinstance(f.metadata.get("choices", ()), tuple), f"{where}{f.name}"
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                walk(f.type, f"{where}{f.name}.")

    import typing

    for model_type in FAMILIES:
        if model_type == "moshi":
            pytest.importorskip("moshi")
        cls = schema(model_type)
        walk(cls, "")
        hints = typing.get_type_hints(cls)
        for name in ("model", "data", "train", "lora"):
            if dataclasses.is_dataclass(hints[name]):
                walk(hints[name], f"{name}.")
        assert {f.name: f.default for f in dataclasses.fields(cls)}["model_type"] == model_type
        assert "choices" in next(f for f in dataclasses.fields(hints["train"]) if f.name == "mode").metadata


def test_renamed_train_keys_still_read_for_one_release(tmp_path):
    """`train.ttt_learning_rate` and `train.ttt_max_grad_norm` (the names before the TTT parameters'
    optimizer settings were told apart from the fast weights' eta) map to the new keys, with a warning;
    so do `train.batch_size` (Moshi's) and `ttt.target`, all from the one table."""
    path = write(tmp_path, BASE + "train:\n  ttt_learning_rate: 0.001\n")
    with pytest.warns(FutureWarning, match="train.ttt_learning_rate is deprecated; use train.ttt_params_learning_rate"):
        c = load_config(path, ["--train.ttt_max_grad_norm", "0.5", "--train.batch_size", "3", "--ttt.target", "token_embeddings"])
    assert c.train.ttt_params_learning_rate == 0.001 and c.train.ttt_params_max_grad_norm == 0.5
    assert c.train.per_device_train_batch_size == 3 and c.ttt.target_source == "token_embeddings"
    with pytest.raises(ValueError, match="train.ttt_learning_rate is the old name of train.ttt_params_learning_rate"):
        load_config(path, ["--train.ttt_params_learning_rate", "0.01"])


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (
            BASE + "trian: {}\n",
            [],
            r"unknown key\(s\) \['trian'\]; valid keys here: \['data', 'gguf_file', 'lora', 'model', 'model_type', 'tokenizer', 'train', 'ttt'\]",
        ),
        (BASE, ["--train.lr", "1"], r"unknown key\(s\) \['train.lr'\]; valid keys here: .*'learning_rate'"),
        (BASE, ["--train.bf16", "maybe"], r"train.bf16 must be one of \('auto', True, False\); got 'maybe'"),
        (BASE, ["--model_type", "jax"], r"model_type must be one of \('transformers', 'moshi', 'scratch'\); got 'jax'"),
        (BASE, ["--train.mode", "half"], r"train.mode must be one of \('full', 'ttt_only', 'lora'\)"),
        (BASE, ["--train.max_steps", "ten"], "train.max_steps: expected int, got 'ten'"),
        (BASE, ["--ttt.chunk_size", "0"], r"chunk_size must be an integer in \[1, 1048576\]"),
        ("data:\n  train: [x]\n", [], "model: give a model directory"),
        ("model: m\n", [], "data.train: give at least one file"),
        (BASE, ["--train.max_steps"], "overrides come in pairs"),
        # values that were silently reinterpreted
        (BASE, ["--train.max_steps", "0"], r"train.max_steps must be >= 1, or -1 to train for train.num_train_epochs; got 0"),
        (BASE, ["--train.max_steps", "-5"], r"train.max_steps must be >= 1, or -1 .*; got -5"),
        (BASE, ["--train.num_train_epochs", "0"], r"train.num_train_epochs must be a finite number > 0; got 0"),
        (BASE, ["--train.warmup_ratio", "5"], r"train.warmup_ratio must be in \[0, 1\) \(a share of the steps; use train.warmup_steps for a count\); got 5"),
        (BASE, ["--train.save_steps", "0"], r"train.save_steps must be >= 1; got 0"),
        (BASE, ["--train.logging_steps", "0"], r"train.logging_steps must be >= 1; got 0"),
        (BASE, ["--train.eval_steps", "0"], r"train.eval_steps must be null or >= 1; got 0"),
        (BASE, ["--train.output_dir", "{a: 1}"], r"train.output_dir: expected str, got \{'a': 1\}"),
        (BASE, ["--model", "[a, b]"], r"model: expected str, got \['a', 'b'\]"),
        # values at the edge: non-finite, absurd, of another type
        (BASE, ["--train.max_steps", ".inf"], r"train.max_steps: expected int, got inf"),
        (BASE, ["--train.learning_rate", ".nan"], r"train.learning_rate must be a finite number; got nan"),
        (BASE, ["--train.learning_rate", "inf"], r"train.learning_rate must be a finite number; got 'inf'"),
        (BASE, ["--data.row_length", "10000000000"], r"data.row_length must be in \[2, 1048576\] \(one row is held in memory at once\); got 10000000000"),
        (BASE, ["--ttt.chunk_size", str(2**62)], r"ttt.chunk_size|TTTConfig.chunk_size must be an integer in \[1, 1048576\]"),
        (BASE, ["--ttt.conv_kernel", "1000000001"], r"TTTConfig.conv_kernel must be an odd integer in \[1, 1023\]"),
        (BASE, ["--data.train", "5"], r"data.train: expected a list of str \(or one str\), got 5"),
        (BASE, ["--data.train", "{a: 1}"], r"data.train: expected a list of str \(or one str\), got \{'a': 1\}"),
        (BASE, ["--ttt.layers", "2.5"], r"TTTConfig.layers must be a list of layer indices or a rule"),
        (BASE, ["--train.neftune_noise_alpha", "-.inf"], r"train.neftune_noise_alpha must be a finite number; got -inf"),
        (BASE, ["--train.accelerator_config", "none"], r"train: .*No such file or directory: 'none'"),
        ("model_type: scratch\ndata:\n  train: [docs]\n", ["--model.num_attention_heads", "0"], r"model.num_attention_heads must be >= 1; got 0"),
        (BASE, ["--train.fsdp_config", "fsdp.json"], r"train.fsdp_config is set but train.fsdp is not, so it would be ignored"),
        # allocations checked against the machine
        (
            BASE,
            ["--train.dataloader_num_workers", "100000"],
            r"train.dataloader_num_workers must be in \[0, \d+\] \(4 per core of this machine's \d+; .*got 100000",
        ),
        (BASE, ["--train.dataloader_num_workers", "-1"], r"train.dataloader_num_workers must be in \[0, \d+\].*got -1"),
        # values that ended in tracebacks
        (BASE, ["--train.gradient_accumulation_steps", "0"], r"train.gradient_accumulation_steps must be >= 1; got 0"),
        (BASE, ["--train.per_device_train_batch_size", "0"], r"train.per_device_train_batch_size must be >= 1; got 0"),
        (BASE, ["--train.per_device_train_batch_size", "-2"], r"train.per_device_train_batch_size must be >= 1; got -2"),
        (BASE, ["--train.learning_rate", "-1e-5"], r"train.learning_rate must be a finite number >= 0; got -1e-05"),
        (BASE, ["--train.learning_rate", "[1,"], r"--train.learning_rate: not valid YAML at line 1, column \d+"),
        (BASE + "train:\n  mode: lora\n  learning_rate: 1e-5: 2\n", [], r"run.yaml: not valid YAML at line 6, column 22: mapping values are not allowed here"),
        (BASE + "train:\n\tmode: lora\n", [], r"run.yaml: not valid YAML at line 5, column 1: found character '\\t'"),
        # values transformers or torch refused only after the run folder was written
        (
            BASE,
            ["--train.lr_scheduler_kwargs", "{bogus: 1}"],
            r"train.lr_scheduler_kwargs: \['bogus'\] are not arguments of the 'cosine' schedule; it takes \['num_cycles'\]",
        ),
        (BASE, ["--train.lr_scheduler_kwargs", "5"], r"train.lr_scheduler_kwargs must be a mapping of the schedule's arguments; got 5"),
        (BASE, ["--train.adam_beta1", "2"], r"train.adam_beta1 must be in \[0, 1\); got 2"),
        (BASE, ["--train.adam_beta2", "-1"], r"train.adam_beta2 must be in \[0, 1\); got -1"),
        (BASE, ["--train.adam_epsilon", "0"], r"train.adam_epsilon must be a finite number > 0; got 0"),
        (BASE, ["--train.label_smoothing_factor", "2"], r"train.label_smoothing_factor must be in \[0, 1\); got 2"),
        (BASE, ["--train.eval_accumulation_steps", "0"], r"train.eval_accumulation_steps must be null or >= 1; got 0"),
        (BASE, ["--train.neftune_noise_alpha", "-1"], r"train.neftune_noise_alpha must be null or a finite number >= 0; got -1"),
        (BASE, ["--train.seed", "-1"], r"train.seed must be in \[0, 2\*\*32\) \(numpy's seeds\); got -1"),
        # a key given twice: PyYAML kept the last, dropping the first silently
        (BASE + "ttt:\n  chunk_size: 16\nttt:\n  layers: [1]\n", [], r"run.yaml: not valid YAML at line \d+, column 1: the key 'ttt' is given twice"),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path, text, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_run_config(write(tmp_path, text), overrides)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")):
        config = load_run_config(path)
        assert config.model and (config.ttt is None or config.data.row_length >= 2 * config.ttt.chunk_size), path


def test_a_leading_tilde_in_a_path_field_is_the_home_folder_as_in_a_shell(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_run_config(
        write(tmp_path, "model: ~/base\ndata:\n  train: [~/docs, a~b]\n  eval: ~/held\ntrain:\n  output_dir: ~/runs/x\n"), ["--tokenizer", "~/tok"]
    )
    assert (config.model, config.tokenizer, config.train.output_dir) == (f"{tmp_path}/base", f"{tmp_path}/tok", f"{tmp_path}/runs/x")
    assert config.data.train == [f"{tmp_path}/docs", "a~b"] and config.data.eval == [f"{tmp_path}/held"]
    assert load_run_config(write(tmp_path, BASE), ["--train.run_name", "~x"]).train.run_name == "~x"  # not a path field: as given


EDGE_VALUES = {
    int: [0, -1, 1, 3, 2**31, 2**62, -(2**62), 10**30],
    float: [0.0, -1.5, 0.5, 1e-300, 1e308, math.nan, math.inf, -math.inf],
    str: ["", "x", "~/x", "auto", "none", "1e-5", "every 0"],
    bool: [True, False],
}
OTHER_VALUES = [None, [], [1], ["a", "b"], [[1]], {"a": 1}, {}, 7, 2.5, "text", True]
MINIMAL_RUNS = {
    "transformers": {"model": "some/model", "data": {"train": ["docs"]}},
    "scratch": {"model_type": "scratch", "data": {"train": ["docs"], "row_length": 256}},
    "moshi": {"model_type": "moshi", "model": {"weights": "model.safetensors"}, "data": {"train": ["codes"], "row_length": 300}},
}


def _leaf_fields(section_type: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(section_type)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(section_type) if f.init]


def _drawn(rng: random.Random, tp) -> object:
    """A value of the field's own type (edge values included) half the time, any other value else."""
    own = [v for t in (typing.get_args(tp) or (tp,)) for v in EDGE_VALUES.get(typing.get_origin(t) or t, [])]
    if typing.get_origin(tp) is list or list in typing.get_args(tp):
        own += [[v] for v in EDGE_VALUES[str]] + [5]
    return rng.choice(own) if own and rng.random() < 0.5 else rng.choice(OTHER_VALUES)


def _finite_throughout(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_throughout(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_throughout(v) for v in value)
    return True


def test_random_values_in_every_field_build_or_are_refused_by_name(tmp_path):
    """Drawn values (huge and negative ints, NaN and infinities, strings, lists, None) in every
    field of every family's run config: a built config (whose record is finite) or a ValueError
    naming the field, never another exception."""
    rng = random.Random(0)
    sections = {family: [(section, tp) for section, tp in _leaf_fields(schema(family)) if dataclasses.is_dataclass(tp)] for family in MINIMAL_RUNS}
    built = refused = 0
    for _ in range(300):
        family = rng.choice(list(MINIMAL_RUNS))
        section, section_type = rng.choice(sections[family])
        key, tp = rng.choice(_leaf_fields(section_type))
        value = _drawn(rng, tp)
        data = copy.deepcopy(MINIMAL_RUNS[family])
        data.setdefault(section, {})[key] = value
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            config = load_run_config(path)
        except ValueError as e:  # RunError is one
            assert str(e).strip(), (family, section, key, value)
            refused += 1
        else:
            assert _finite_throughout(config.to_dict()), (family, section, key, value)
            built += 1
    assert built > 30 and refused > 30, (built, refused)


@pytest.mark.parametrize(
    "lora, message",
    [
        ({"r": 0}, "lora.r must be an integer >= 1; got 0"),
        ({"dropout": 1.5}, r"lora.dropout must be in \[0, 1\); got 1.5"),
        ({"target_modules": []}, "lora.target_modules"),
    ],
)
def test_lora_values_are_named_under_the_lora_section(lora, message):
    """PEFT's own errors named its arguments, not the run's keys."""
    from inplace_ttt.train.config import LoraSettings, build_config

    with pytest.raises(ValueError, match=message):
        build_config(LoraSettings, lora)
