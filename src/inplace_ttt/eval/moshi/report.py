"""`ittt moshi-eval`'s ``report.md``: per metric a table of each model's loss by minute of the
conversation with its 95% interval, and one plot of the four metrics."""

from __future__ import annotations

from pathlib import Path

from ...files import write_atomic
from ...speech.transcript import FRAME_RATE
from ..report import line_with_interval, pyplot, save_figure, with_interval
from .buckets import METRICS


def write_moshi_report(results: dict, out: Path) -> Path:
    """``report.md`` (and its plot) in `out` from `results` (what ``results.json`` holds); returns its path."""
    models = results["models"]
    s = results["settings"]
    n = max(len(m["buckets"]["text"]["loss"]) for m in models.values())
    labels = [f"{i * s['bucket_minutes']:g}-{(i + 1) * s['bucket_minutes']:g}" for i in range(n)]
    first = next(iter(models.values()))
    lines = [
        "# Moshi long-conversation evaluation",
        "",
        "Models: " + ", ".join(f"`{name}` ({_describe(m)})" for name, m in models.items()) + ".",
        f"{len(first['conversations'])} conversations; time buckets of {s['bucket_minutes']:g} min; pieces of {s['steps_per_forward']} steps; "
        f"attention context {first['context_steps']} steps ({_minutes(first['context_steps']):.2f} min); device {results['device']}, dtype {results['dtype']}.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric} loss (nats) by minute of the conversation", "", "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * n]
        for name, m in models.items():
            cells = [with_interval(x, ci) for x, ci in zip(m["buckets"][metric]["loss"], m["buckets"][metric]["interval"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Values per bucket: {first['buckets'][metric]['count']}; [95% bootstrap interval over conversations].", ""]
    plot = _plot(models, s["bucket_minutes"], out / "moshi_loss_by_minute.png")
    lines += ["## Plot", "", f"![{plot.stem}]({plot.name})", "", "Every number, per conversation too, is in `results.json`."]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _describe(m: dict) -> str:
    return (
        m["weights"]
        + (f", TTT layers {m['ttt_layers']}" if m["ttt"] else ", no TTT")
        + (f", clip_tau {m['clip_tau']}" if m["clip_tau"] is not None else "")
        + (f", YaRN x{m['yarn']:g}" if m["yarn"] else "")
    )


def _minutes(steps: int) -> float:
    return steps / FRAME_RATE / 60


def _plot(models: dict, minutes: float, path: Path) -> Path:
    """Loss by minute, one panel a metric, one line a model with its band; the attention context marked."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    context = _minutes(next(iter(models.values()))["context_steps"])
    for ax, metric in zip(axes.flat, METRICS):
        for name, m in models.items():
            losses = m["buckets"][metric]["loss"]
            line_with_interval(ax, [(i + 0.5) * minutes for i in range(len(losses))], losses, m["buckets"][metric]["interval"], name)
        ax.axvline(context, color="grey", ls="--", lw=1, label="attention context")
        ax.set(title=f"{metric} loss", xlabel="minutes into the conversation (bucket middle)", ylabel="mean loss (nats)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    return save_figure(fig, path)
