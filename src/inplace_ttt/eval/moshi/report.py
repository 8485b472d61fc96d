"""`ittt moshi-eval`'s ``report.md``: per metric a table of each model's loss by minute of the
conversation with its 95% interval, then each model's paired difference from the baseline; one
plot of the four metrics' losses and one of the differences."""

from __future__ import annotations

from pathlib import Path

from ...files import write_atomic
from ...speech.transcript import FRAME_RATE
from ..report import line_with_interval, pyplot, save_figure, with_interval
from .buckets import METRICS


def write_moshi_report(results: dict, out: Path) -> Path:
    """``report.md`` (and its plots) in `out` from `results` (what ``results.json`` holds); returns its path."""
    models = results["models"]
    s = results["settings"]
    baseline = results.get("baseline")
    versus = {f"{name} - {baseline}": m["paired"] for name, m in models.items() if "paired" in m}
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
    if versus:
        lines += [
            f"Rows `MODEL - {baseline}`: the paired difference from the baseline `{baseline}` (negative: a lower loss than the baseline's), "
            "its 95% interval resampling conversations with both models' losses on each together, so that a conversation's own difficulty cancels.",
            "",
        ]
    for metric in METRICS:
        lines += [f"## {metric} loss (nats) by minute of the conversation", "", "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * n]
        for name, m in models.items():
            cells = [with_interval(x, ci) for x, ci in zip(m["buckets"][metric]["loss"], m["buckets"][metric]["interval"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, p in versus.items():
            cells = [with_interval(x, ci, signed=True) for x, ci in zip(p[metric]["difference"], p[metric]["interval"])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Values per bucket: {first['buckets'][metric]['count']}; [95% bootstrap interval over conversations].", ""]
    curves = {name: {metric: (m["buckets"][metric]["loss"], m["buckets"][metric]["interval"]) for metric in METRICS} for name, m in models.items()}
    context = _minutes(first["context_steps"])
    plots = [_plot(curves, s["bucket_minutes"], context, out / "moshi_loss_by_minute.png", "loss", "mean loss (nats)")]
    if versus:
        differences = {name: {metric: (p[metric]["difference"], p[metric]["interval"]) for metric in METRICS} for name, p in versus.items()}
        plots.append(
            _plot(
                differences,
                s["bucket_minutes"],
                context,
                out / "moshi_difference_by_minute.png",
                f"loss minus {baseline}'s",
                "paired difference (nats)",
                zero=True,
            )
        )
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), "", "Every number, per conversation too, is in `results.json`."]
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


def _plot(curves: dict[str, dict[str, tuple[list, list]]], minutes: float, context: float, path: Path, what: str, ylabel: str, zero: bool = False) -> Path:
    """By minute, one panel a metric, one line a curve (`curves`: name -> metric -> values and their
    intervals) with its band; the attention context marked, and the zero line for differences."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    for ax, metric in zip(axes.flat, METRICS):
        for name, by_metric in curves.items():
            values, intervals = by_metric[metric]
            line_with_interval(ax, [(i + 0.5) * minutes for i in range(len(values))], values, intervals, name)
        if zero:
            ax.axhline(0, color="black", lw=1)
        ax.axvline(context, color="grey", ls="--", lw=1, label="attention context")
        ax.set(title=f"{metric} {what}", xlabel="minutes into the conversation (bucket middle)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    return save_figure(fig, path)
