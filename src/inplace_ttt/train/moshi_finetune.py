"""moshi-finetune's training YAML, read unchanged as an `ittt train` run of the Moshi family.

A config with a top-level ``run_dir`` and no ``model_type`` is moshi-finetune's (`finetune/args.py`:
``TrainArgs`` and its ``data``, ``moshi_paths``, ``optim``, ``lora`` and ``wandb`` sections), plus
an optional ``ttt`` section of ours (absent: Moshi's TTT defaults; ``null``: moshi-finetune's run
as it is, the fair baseline). `KEYS` is the whole mapping, one row per key, each with
moshi-finetune's own default (used when the key is absent, so a run means what it means there);
docs/moshi.md prints it as a table, and a test holds the two together. Unknown keys are refused by
name with the valid ones listed; each value is checked under its own name before it becomes ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import CHECKPOINTING_KEYS, convert_value

FRAME_RATE = 12.5  # Mimi's frames (Moshi's steps) per second: moshi's loaders.FRAME_RATE
ADAM_BETAS = (0.9, 0.95)  # moshi-finetune's AdamW (train.py)
TTT_KEY = "ttt"


@dataclass(frozen=True)
class Key:
    """One key of moshi-finetune's config: its type, its default there, and what it sets here."""

    name: str  # dotted, as in the YAML
    type: Any
    default: Any
    ours: str  # the keys of ours it sets, and how (the docs' table)


KEYS = (
    Key("data.train_data", str, "", "`data.train`: each comma-separated source a manifest (`.jsonl`) or a folder of them; `path:weight` weights must be equal"),
    Key("data.eval_data", str, "", "`data.eval` (read when `do_eval`)"),
    Key("data.shuffle", bool, False, "`train.train_sampling_strategy`: `random` (true) or `sequential` (false)"),
    Key("moshi_paths.hf_repo_id", str | None, "kyutai/moshiko-pytorch-bf16", "`model.hf_repo`"),
    Key("moshi_paths.moshi_path", str | None, None, "`model.weights`"),
    Key("moshi_paths.mimi_path", str | None, None, "`model.mimi`"),
    Key("moshi_paths.tokenizer_path", str | None, None, "`model.tokenizer`"),
    Key("moshi_paths.config_path", str | None, None, "`model.lm_kwargs` (moshi's `config.json`)"),
    Key("run_dir", str, "", "`train.output_dir`"),
    Key("seed", int, 0, "`train.seed` (the data order's too)"),
    Key("duration_sec", float, 10.0, "`data.row_length` = duration_sec × 12.5 steps"),
    Key("batch_size", int, 1, "`train.per_device_train_batch_size`"),
    Key("num_microbatches", int, 1, "`train.gradient_accumulation_steps`"),
    Key("max_steps", int, 100, "`train.max_steps`"),
    Key("max_norm", float, 1.0, "`train.max_grad_norm`"),
    Key("log_freq", int, 1, "`train.logging_steps`"),
    Key("optim.lr", float, 1e-4, "`train.learning_rate`"),
    Key("optim.weight_decay", float, 0.1, "`train.weight_decay` (AdamW betas (0.9, 0.95): `train.adam_beta2` 0.95)"),
    Key("optim.pct_start", float, 0.05, "`train.warmup_ratio`, then `train.lr_scheduler_type` cosine (their OneCycleLR)"),
    Key("first_codebook_weight_multiplier", float, 1.0, "`train.first_codebook_weight`"),
    Key("text_padding_weight", float, 0.5, "`train.text_padding_weight`"),
    Key("full_finetuning", bool, False, "`train.mode` full"),
    Key("lora.enable", bool, False, "`train.mode` lora (both false: ttt_only, which needs TTT)"),
    Key("lora.rank", int, 64, "`lora.r`; `lora.target_modules` [all-linear], as moshi's LoRA wraps every linear layer"),
    Key("lora.scaling", float, 2.0, "`lora.alpha` = scaling × rank (PEFT scales by alpha / r)"),
    Key("lora.ft_embed", bool, False, "false only: training the embeddings beside LoRA is not supported yet"),
    Key("save_adapters", bool, True, "`lora.save_adapters`: final/ holds moshi's `lora.safetensors` (true) or merged weights (false)"),
    Key("gradient_checkpointing", bool, True, "`train.activation_checkpointing` (moshi's own)"),
    Key("param_dtype", str, "bfloat16", "`model.dtype` (float32 master copies step the trained weights)"),
    Key("do_ckpt", bool, True, "false: `train.save_strategy` no (final/ is still written)"),
    Key("ckpt_freq", int, 0, "`train.save_steps`; below 1: `train.save_strategy` no (only final/, their 'last checkpoint')"),
    Key("num_ckpt_keep", int | None, 3, "`train.save_total_limit`"),
    Key("do_eval", bool, False, "true: evaluate `data.eval`"),
    Key("eval_freq", int, 0, "`train.eval_steps`; 0: at the last step only"),
    Key("overwrite_run_dir", bool, False, "false only: ittt never deletes a run folder (remove it yourself, or continue it with --resume)"),
    Key("wandb.project", str | None, None, "`train.report_to` [wandb], `WANDB_PROJECT`"),
    Key("wandb.run_name", str | None, None, "`train.run_name`"),
    Key("wandb.offline", bool, False, "true: `WANDB_MODE=offline`"),
    Key("wandb.key", str | None, None, "`WANDB_API_KEY`"),
)
SECTIONS = sorted({k.name.split(".")[0] for k in KEYS if "." in k.name})


def is_moshi_finetune(data: dict[str, Any]) -> bool:
    """A moshi-finetune config: its one required top-level key (`run_dir`), and no `model_type` of ours."""
    return "run_dir" in data and "model_type" not in data


def _given(data: dict[str, Any]) -> dict[str, Any]:
    """The YAML's keys, dotted, checked against `KEYS` (the `ttt` section apart)."""
    valid = {k.name for k in KEYS}
    given, unknown = {}, []
    for key, value in data.items():
        if key == TTT_KEY:
            continue
        if key not in SECTIONS:
            if key in valid:
                given[key] = value
            else:
                unknown.append(key)
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a section (a mapping), got {value!r}")
        for sub, item in value.items():
            if f"{key}.{sub}" in valid:
                given[f"{key}.{sub}"] = item
            else:
                unknown.append(f"{key}.{sub}")
    if unknown:
        raise ValueError(f"unknown moshi-finetune key(s) {unknown}; valid keys: {sorted(valid) + [TTT_KEY]}")
    return given


def _sources(text: str, key: str) -> list[str]:
    """moshi-finetune's data sources: ``path[:weight]`` separated by commas, each a manifest or a
    folder searched for ``*.jsonl``; sampling by weight is not ours, so weights must be equal."""
    paths, weights = [], []
    for source in (s.strip() for s in text.split(",")):
        if not source:
            continue
        path, *weight = source.split(":")
        try:
            if len(weight) > 1:
                raise ValueError
            weights.append(float(weight[0]) if weight else 1.0)
        except ValueError:
            raise ValueError(f"{key}: {source!r} is neither path nor path:weight") from None
        folder = Path(path).expanduser()
        if folder.is_dir():
            found = sorted(str(p) for p in folder.rglob("*jsonl"))
            if not found:
                raise ValueError(f"{key}: {path} holds no .jsonl manifest")
            paths += found
        elif folder.is_file():
            paths.append(str(folder))
        else:
            raise ValueError(f"{key}: no such file or folder: {path}")
    if len(set(weights)) > 1:
        raise ValueError(f"{key}: sampling weights {weights} differ; ittt train reads every source alike (give equal weights, or none)")
    return paths


def translate(data: dict[str, Any]) -> dict[str, Any]:
    """Our run mapping (``model_type: moshi``) for a moshi-finetune config; its `ttt` section as given."""
    given = _given(data)
    v = {k.name: convert_value(k.type, given.get(k.name, k.default), k.name) for k in KEYS}
    if not v["run_dir"]:
        raise ValueError("run_dir: give the run folder")
    if not v["data.train_data"]:
        raise ValueError("data.train_data: give a manifest (.jsonl of {path, duration} lines) or a folder of them")
    if v["overwrite_run_dir"]:
        raise ValueError("overwrite_run_dir must be false: ittt never deletes a run folder (remove it yourself, or continue it with --resume)")
    if v["lora.ft_embed"]:
        raise ValueError("lora.ft_embed must be false: training the embeddings beside LoRA is not supported yet")
    if v["full_finetuning"] and v["lora.enable"]:
        raise ValueError("full_finetuning: true trains every weight, so lora.enable must be false (as in moshi-finetune)")
    if v["param_dtype"] not in ("float32", "bfloat16"):
        raise ValueError(f"param_dtype must be 'float32' or 'bfloat16'; got {v['param_dtype']!r}")
    if not v["duration_sec"] > 0:
        raise ValueError(f"duration_sec must be > 0; got {v['duration_sec']}")
    if v["do_eval"] and not v["data.eval_data"]:
        raise ValueError("do_eval: true needs data.eval_data (a manifest or a folder of them)")
    mode = "full" if v["full_finetuning"] else "lora" if v["lora.enable"] else "ttt_only"
    train: dict[str, Any] = {
        "output_dir": v["run_dir"],
        "mode": mode,
        "seed": v["seed"],
        "per_device_train_batch_size": v["batch_size"],
        "gradient_accumulation_steps": v["num_microbatches"],
        "max_steps": v["max_steps"],
        "max_grad_norm": v["max_norm"],
        "logging_steps": v["log_freq"],
        "learning_rate": v["optim.lr"],
        "weight_decay": v["optim.weight_decay"],
        "adam_beta1": ADAM_BETAS[0],
        "adam_beta2": ADAM_BETAS[1],
        "warmup_ratio": v["optim.pct_start"],
        "lr_scheduler_type": "cosine",
        "first_codebook_weight": v["first_codebook_weight_multiplier"],
        "text_padding_weight": v["text_padding_weight"],
        CHECKPOINTING_KEYS[0]: v["gradient_checkpointing"],  # transformers' current name (5.2x: activation_checkpointing)
        "train_sampling_strategy": "random" if v["data.shuffle"] else "sequential",
        "save_total_limit": v["num_ckpt_keep"],
    }
    if v["do_ckpt"] and v["ckpt_freq"] >= 1:
        train["save_steps"] = v["ckpt_freq"]
    else:
        train["save_strategy"] = "no"
    if v["do_eval"]:
        train["eval_steps"] = v["eval_freq"] if v["eval_freq"] > 0 else v["max_steps"]
    if v["wandb.project"]:
        train["report_to"] = ["wandb"]
        _wandb_environment(v)
    if v["wandb.run_name"]:
        train["run_name"] = v["wandb.run_name"]
    run: dict[str, Any] = {
        "model_type": "moshi",
        "model": {
            "hf_repo": v["moshi_paths.hf_repo_id"],
            "weights": v["moshi_paths.moshi_path"] or "",
            "lm_kwargs": v["moshi_paths.config_path"],
            "mimi": v["moshi_paths.mimi_path"],
            "tokenizer": v["moshi_paths.tokenizer_path"],
            "dtype": v["param_dtype"],
        },
        "data": {
            "train": _sources(v["data.train_data"], "data.train_data"),
            "eval": _sources(v["data.eval_data"], "data.eval_data") if v["do_eval"] else [],
            "row_length": max(2, round(v["duration_sec"] * FRAME_RATE)),
        },
        "train": train,
        "lora": {
            "r": v["lora.rank"],
            "alpha": v["lora.scaling"] * v["lora.rank"],
            "target_modules": ["all-linear"],
            "save_adapters": v["save_adapters"] and mode == "lora",
        },
    }
    if TTT_KEY in data:
        run[TTT_KEY] = data[TTT_KEY]
    return run


def _wandb_environment(v: dict[str, Any]) -> None:
    """wandb reads its project, mode and key from the environment (transformers' callback has no
    arguments for them); a variable the user set wins."""
    os.environ.setdefault("WANDB_PROJECT", v["wandb.project"])
    if v["wandb.offline"]:
        os.environ.setdefault("WANDB_MODE", "offline")
    if v["wandb.key"]:
        os.environ.setdefault("WANDB_API_KEY", v["wandb.key"])
