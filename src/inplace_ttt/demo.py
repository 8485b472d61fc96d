"""`ittt demo`: the whole pipeline on the embedded base model and corpus, on a laptop CPU.

1. convert the embedded base model (sliding-window attention over 128 tokens) and check the
   warm start (logits before any training);
2. continual-train it with In-Place TTT, and, with the same data, steps, learning rates and seed,
   train the unconverted model: the fair baseline the paper compares against;
3. evaluate both trained models on passages of the held-out books: the paper's Fig. 2 view (the
   loss of each passage's last block as the context before it grows past the window), loss by
   position and associative recall, with 95% bootstrap intervals and the paired difference
   ittt - baseline, in one report with plots; the Fig. 2 table is printed at the end.

Everything goes into one run directory. The defaults fit in ten minutes on two CPU cores;
the flags allow a longer run.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .assets import base_model_dir, corpus_files
from .config import TTTConfig
from .eval.recall import TASK as RECALL_TASK
from .eval.report import plot_training, sliding_window_section
from .eval.runner import LOSS_TASK, WINDOW_TASK, EvalSettings, evaluate
from .families import convert
from .train.config import DataConfig, RunConfig, TrainConfig
from .train.run import train

DEMO_TASKS = (LOSS_TASK, WINDOW_TASK, RECALL_TASK)


@dataclass
class DemoSettings:
    out: str | None = None  # default: runs/demo-<date>-<time>
    steps: int = 150
    row_length: int = 1024
    batch_size: int = 2
    learning_rate: float = 3e-4
    ttt_params_learning_rate: float = 1e-4
    # tuned on this corpus (TRAINING.md, docs/demo.md): the last layer, targets from the token embeddings,
    # W_target starting at the identity
    ttt: TTTConfig = field(default_factory=lambda: TTTConfig(layers=[3], chunk_size=64, ttt_lr=3.0, target_source="token_embeddings", target_init="identity"))
    eval_lengths: list[int] = field(default_factory=lambda: [1024])
    block: int = 128
    passages: int = 48
    samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        """Every setting checked here, before anything trains (a bad one used to surface after minutes of training)."""
        for name in ("steps", "batch_size", "passages", "samples", "block"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("learning_rate", "ttt_params_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {value}")
        limit = json.loads((base_model_dir() / "config.json").read_text())["max_position_embeddings"]
        if max(self.eval_lengths) > limit or self.row_length > limit:
            raise ValueError(
                f"lengths and row_length must be at most {limit} tokens, the embedded base model's positions; "
                f"got lengths up to {max(self.eval_lengths)}, row_length {self.row_length}"
            )
        if self.row_length < 2 * self.ttt.chunk_size:
            raise ValueError(f"row_length ({self.row_length}) must hold at least two TTT chunks ({self.ttt.chunk_size} tokens each)")
        if max(self.eval_lengths) <= self.block:
            raise ValueError(f"the longest eval length ({max(self.eval_lengths)}) must exceed the final block ({self.block} tokens)")

    def contexts(self) -> list[int]:
        """Context lengths before the final block: 0, then doubling from 128 (the base model's
        attention window), then the longest."""
        longest = max(self.eval_lengths) - self.block
        return [0] + [c for c in (128 * 2**k for k in range(16)) if c < longest] + [longest]


def warm_start_gap(base_dir: Path, ttt: TTTConfig, tokenizer, text: str, length: int) -> float:
    """Max |logit difference| between the base model and its converted copy on real text."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    converted = convert(copy.deepcopy(base), ttt).eval()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :length]
    with torch.no_grad():
        return float((converted(input_ids=ids).logits - base(input_ids=ids).logits).abs().max())


def run_demo(settings: DemoSettings) -> Path:
    """Run the demo; returns the report's path."""
    from transformers import AutoTokenizer

    from .documents import read_documents

    started = time.perf_counter()
    run = Path(settings.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    run.mkdir(parents=True, exist_ok=True)
    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    heldout = corpus_files("heldout")

    print(f"[1/4] warm start: converting {base.name} (TTT layers {settings.ttt.layers}, chunk {settings.ttt.chunk_size})", flush=True)
    gap = warm_start_gap(base, settings.ttt, tokenizer, read_documents(heldout)[0], settings.row_length)
    print(f"      max |logits(converted) - logits(base)| = {gap:.2e}", flush=True)

    runs = {}
    for step, (name, ttt) in enumerate((("ittt", settings.ttt), ("baseline", None)), start=2):
        print(f"[{step}/4] training {name}: {settings.steps} steps of {settings.batch_size} x {settings.row_length} tokens", flush=True)
        config = RunConfig(
            model=str(base),
            ttt=ttt,
            data=DataConfig(train=corpus_files("train"), row_length=settings.row_length),
            train=TrainConfig(
                output_dir=str(run / name),
                learning_rate=settings.learning_rate,
                ttt_params_learning_rate=settings.ttt_params_learning_rate if ttt is not None else None,
                weight_decay=0.1,
                warmup_ratio=0.05,
                max_steps=settings.steps,
                per_device_train_batch_size=settings.batch_size,
                logging_steps=max(1, settings.steps // 20),
                save_steps=10 * settings.steps,  # no intermediate checkpoints: only final/
                seed=settings.seed,
            ),
        )
        runs[name] = train(config)

    print("[4/4] evaluating both trained models on passages of the held-out books", flush=True)
    curves = {name: _losses(run / name / "metrics.jsonl") for name in runs}
    plot_training(curves, run / "training_loss.png", reference="baseline")
    preamble = _preamble(settings, gap, curves)
    report = evaluate(
        EvalSettings(
            models=[str(runs["baseline"]), str(runs["ittt"])],
            names=["baseline", "ittt"],
            baseline="baseline",
            tasks=list(DEMO_TASKS),
            lengths=settings.eval_lengths,
            samples=settings.samples,
            data=heldout,
            seed=settings.seed,
            tokens_per_forward=1024,
            final_block=settings.block,
            contexts=settings.contexts(),
            passages=settings.passages,
            out=str(run),
        ),
        preamble,
    )
    print("\n".join(sliding_window_section(json.loads((run / "results.json").read_text()))), flush=True)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; report: {report}", flush=True)
    return report


def _losses(metrics: Path) -> dict[int, float]:
    rows = (json.loads(line) for line in metrics.read_text().splitlines())
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _preamble(settings: DemoSettings, gap: float, curves: dict[str, dict[int, float]]) -> list[str]:
    t = settings.ttt
    lines = [
        "The `ittt demo` run: the embedded base model (a 4.5M-parameter sliding-window attention model, each token",
        "attending to the last 128, pretrained on the embedded public-domain Bibles) continual-trained with In-Place TTT",
        "(`ittt`) and, with the same data, steps, learning rate and seed, without TTT (`baseline`). TTT on layers",
        f"{t.layers}, chunk {t.chunk_size}, ttt_lr {t.ttt_lr}, target source {t.target_source}, W_target init {t.target_init}"
        f"{f' (std {t.target_init_std})' if t.target_init == 'diagonal' else ''}; {settings.steps} steps of {settings.batch_size} rows x",
        f"{settings.row_length} tokens, AdamW lr {settings.learning_rate} (TTT parameters {settings.ttt_params_learning_rate}).",
        f"Evaluation on {settings.passages} passages of {max(settings.eval_lengths) + 1} tokens cut from the held-out books.",
        "",
        f"Warm start: max |logits(converted) - logits(base)| = {gap:.2e} before training.",
        "",
        "## Training loss",
        "",
        "Both runs see the same batches in the same order; means over the first and the last five logged steps.",
        "",
        "| model | first steps | last steps |",
        "|---|---|---|",
    ]
    for name, curve in curves.items():
        losses = [curve[s] for s in sorted(curve)]
        lines.append(f"| {name} | {_mean(losses[:5]):.3f} | {_mean(losses[-5:]):.3f} |")
    return lines + ["", "![training_loss](training_loss.png)", ""]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)
