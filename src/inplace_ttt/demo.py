"""`ittt demo`: the whole pipeline on the embedded base model and corpus, on a laptop CPU.

1. convert the embedded base model and check the warm start (logits before any training);
2. continual-train it with In-Place TTT, and, with the same data, steps, learning rates and seed,
   train the unconverted model: the fair baseline the paper compares against;
3. evaluate the base model and both trained models on the held-out books (loss by position,
   sliding-window loss) and a small RULER-style set, in one report with plots.

Everything goes into one run directory. The defaults fit in ten minutes on two CPU cores;
the flags allow a longer run.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import convert
from .assets import base_model_dir, corpus_files
from .config import TTTConfig
from .eval.report import plot_training
from .eval.runner import LOSS_TASK, EvalSettings, evaluate
from .train.config import DataConfig, RunConfig, TrainConfig
from .train.run import train

DEMO_TASKS = (LOSS_TASK, "niah_single", "niah_multikey", "vt")


@dataclass
class DemoSettings:
    out: str | None = None  # default: runs/demo-<date>-<time>
    steps: int = 150
    row_length: int = 1024
    batch_size: int = 2
    learning_rate: float = 3e-4
    ttt_learning_rate: float = 1e-5
    ttt: TTTConfig = field(default_factory=lambda: TTTConfig(layers="every 2 from 1", chunk_size=128, ttt_lr=3.0))
    eval_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    samples: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps}")
        if self.row_length < 2 * self.ttt.chunk_size:
            raise ValueError(f"row_length ({self.row_length}) must hold at least two TTT chunks ({self.ttt.chunk_size} tokens each)")


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
                ttt_learning_rate=settings.ttt_learning_rate if ttt is not None else None,
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

    print("[4/4] evaluating the base model and both trained models on the held-out books", flush=True)
    curves = {name: _losses(run / name / "metrics.jsonl") for name in runs}
    plot_training(curves, run / "training_loss.png", reference="baseline")
    preamble = _preamble(settings, gap, curves)
    report = evaluate(
        EvalSettings(
            models=[str(base), str(runs["baseline"]), str(runs["ittt"])],
            names=["base", "baseline", "ittt"],
            tasks=list(DEMO_TASKS),
            lengths=settings.eval_lengths,
            samples=settings.samples,
            data=heldout,
            seed=settings.seed,
            piece=1024,
            out=str(run),
        ),
        preamble,
    )
    results = json.loads((run / "results.json").read_text())
    print(_summary(results), flush=True)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; report: {report}", flush=True)
    return report


def _losses(metrics: Path) -> dict[int, float]:
    rows = (json.loads(line) for line in metrics.read_text().splitlines())
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _preamble(settings: DemoSettings, gap: float, curves: dict[str, dict[int, float]]) -> list[str]:
    t = settings.ttt
    lines = [
        "The `ittt demo` run: the embedded base model (a 4.5M-parameter Llama pretrained on the embedded",
        "public-domain Bibles) continual-trained with In-Place TTT (`ittt`) and, with the same data, steps,",
        f"learning rate and seed, without TTT (`baseline`); `base` is the untrained start. TTT on layers {t.layers},",
        f"chunk {t.chunk_size}, ttt_lr {t.ttt_lr}, target {t.target}; {settings.steps} steps of {settings.batch_size} rows x",
        f"{settings.row_length} tokens, AdamW lr {settings.learning_rate} (TTT parameters {settings.ttt_learning_rate}).",
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


def _summary(results: dict) -> str:
    """The loss-by-position table, for the terminal."""
    models = results["models"]
    first = next(iter(models.values()))["loss_by_position"]
    edges = first["edges"]
    head = "position bucket " + "".join(f"{a:>6}-{b:<6}" for a, b in zip(edges[:-1], edges[1:]))
    rows = [f"{name:<16}" + "".join(f"{x:^13.3f}" for x in m["loss_by_position"]["loss"]) for name, m in models.items()]
    return "\n".join(["mean token loss (nats) by position in the held-out books:", head, *rows])
