"""The evaluation report: `report.md` with tables, and PNG plots with one line per model.

Every compared number carries its 95% bootstrap interval: ``3.412 [3.380, 3.441]`` in the
tables, a shaded band (losses) or error bars (accuracies) in the plots."""

from __future__ import annotations

from pathlib import Path

from ..files import write_atomic


def _fmt(x, digits=3, signed=False) -> str:
    return "-" if x is None else f"{x:{'+' if signed else ''}.{digits}f}"


def with_interval(x, interval, digits=3, signed=False) -> str:
    """A table cell: ``3.412 [3.380, 3.441]``, the number alone without an interval, ``-`` without a
    number; `signed` (a difference): ``-0.012 [-0.020, +0.003]``."""
    if x is None:
        return "-"
    return _fmt(x, digits, signed) + (f" [{_fmt(interval[0], digits, signed)}, {_fmt(interval[1], digits, signed)}]" if interval else "")


def _human(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def write_report(results: dict, out: Path, preamble: list[str] = ()) -> Path:
    models = results["models"]
    names = list(models)
    lines = ["# In-Place TTT evaluation", "", *preamble]
    s = results["settings"]
    lines += [
        "Models: " + ", ".join(f"`{n}` ({m['path']}{', In-Place TTT' if m['ttt'] else ''})" for n, m in models.items()) + ".",
        f"Lengths {', '.join(_human(n) for n in s['lengths'])} tokens, {s['samples']} samples per task and length, seed {s['seed']}, "
        f"clip_tau {s['clip_tau']}, device {results['device']}, dtype {s['dtype']}.",
        "",
    ]
    plots = []
    tasks = sorted({t for m in models.values() for t in m["ruler"]})
    if tasks:
        lengths = [str(n) for n in s["lengths"]]
        lines += [
            "## RULER-style tasks (accuracy %, 95% interval over samples)",
            "",
            "| task | model | " + " | ".join(_human(int(n)) for n in lengths) + " | mean |",
        ]
        lines += ["|---|---|" + "---|" * (len(lengths) + 1)]
        for task in tasks:
            for name in names:
                cells = [models[name]["ruler"].get(task, {}).get(n, {}) for n in lengths]
                got = [c["accuracy"] for c in cells if c]
                lines.append(
                    f"| {task} | {name} | "
                    + " | ".join(with_interval(c.get("accuracy"), c.get("interval"), 1) for c in cells)
                    + f" | {_fmt(sum(got) / len(got) if got else None, 1)} |"
                )
        lines.append("")
        plots.append(_plot_ruler(models, tasks, lengths, out / "ruler_accuracy.png"))
    if any("recall" in m for m in models.values()):
        lengths = [str(n) for n in s["lengths"]]
        info = results["recall"]
        gaps = ", ".join(f"{info['gap'][n]} at {_human(int(n))}" for n in lengths)
        lines += [
            "## Associative recall (accuracy %, 95% interval over samples)",
            "",
            f"{s['recall_pairs']} key-value pairs at the start, all queried at the end after a gap of {gaps} tokens; "
            f"scored teacher-forced (Zoology's MQAR); chance {info['chance']:.2f}%.",
            "",
            "| model | " + " | ".join(_human(int(n)) for n in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for name in names:
            cells = [models[name].get("recall", {}).get(n, {}) for n in lengths]
            lines.append(f"| {name} | " + " | ".join(with_interval(c.get("accuracy"), c.get("interval"), 1) for c in cells) + " |")
        lines.append("")
        plots.append(_plot_recall(models, lengths, info["chance"], out / "recall_accuracy.png"))
    if any("loss_by_position" in m for m in models.values()):
        first = next(m for m in models.values() if "loss_by_position" in m)["loss_by_position"]
        edges = first["edges"]
        buckets = [f"{_human(a)}-{_human(b)}" for a, b in zip(edges[:-1], edges[1:])]
        lines += [
            "## Loss by position (mean token loss, nats; 95% interval over documents)",
            "",
            "| model | " + " | ".join(buckets) + " |",
            "|---|" + "---|" * len(buckets),
        ]
        for name in names:
            lp = models[name]["loss_by_position"]
            lines.append(f"| {name} | " + " | ".join(with_interval(x, i) for x, i in zip(lp["loss"], lp["interval"])) + " |")
        lines += ["", f"Tokens per bucket: {first['tokens']}; documents per bucket: {first['documents']}.", ""]
        plots.append(_plot_loss(models, out / "loss_by_position.png"))
        contexts = sorted({int(c) for m in models.values() for c in m["sliding_window"]["contexts"]})
        block = next(m for m in models.values() if "sliding_window" in m)["sliding_window"]["block"]
        lines += [
            f"## Sliding window: loss of the final {block} tokens as the context before them grows",
            "",
            "Mean over documents of each document's block loss (nats), with its 95% interval over documents.",
            "",
            "| model | " + " | ".join(f"ctx {_human(c)}" for c in contexts) + " |",
            "|---|" + "---|" * len(contexts),
        ]
        for name in names:
            rows = models[name]["sliding_window"]["contexts"]
            cells = [rows.get(c, rows.get(str(c), {})) for c in contexts]
            lines.append(f"| {name} | " + " | ".join(with_interval(r.get("loss"), r.get("interval")) for r in cells) + " |")
        counts = next(m for m in models.values() if "sliding_window" in m)["sliding_window"]["contexts"]
        lines += ["| documents | " + " | ".join(str(counts.get(c, counts.get(str(c), {})).get("documents", "-")) for c in contexts) + " |", ""]
        plots.append(_plot_sliding(models, out / "sliding_window.png"))
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + ["", "Every number is in `results.json`."]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot drawing off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log2_axis(ax) -> None:
    """A log-2 x axis labelled in tokens (``512``, ``4k``), not powers of two."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(int(round(v)))))


def _plot_ruler(models, tasks, lengths, path: Path) -> Path:
    plt = pyplot()
    cols = min(4, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    x = [int(n) for n in lengths]
    for ax, task in zip(axes.flat, tasks):
        for name, m in models.items():
            cells = [m["ruler"].get(task, {}).get(n, {}) for n in lengths]
            line_with_interval(ax, x, [c.get("accuracy") for c in cells], [c.get("interval") for c in cells], name, bars=True)
        ax.set_title(task)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [_human(n) for n in x])
        ax.set_ylim(-5, 105)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy (%, 95% interval)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend()
    return save_figure(fig, path)


def _plot_recall(models, lengths, chance: float, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [int(n) for n in lengths]
    for name, m in models.items():
        cells = [m.get("recall", {}).get(n, {}) for n in lengths]
        line_with_interval(ax, x, [c.get("accuracy") for c in cells], [c.get("interval") for c in cells], name, bars=True)
    ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    _log2_axis(ax)
    ax.set(title="Associative recall", xlabel="sequence length (tokens)", ylabel="accuracy (%, 95% interval)", ylim=(-5, 105))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def _plot_loss(models, path: Path) -> Path:
    series = {}
    for name, m in models.items():
        lp = m["loss_by_position"]
        series[name] = ([max(1, (a + b) / 2) for a, b in zip(lp["edges"][:-1], lp["edges"][1:])], lp["loss"], lp["interval"])
    return _log2_chart(series, path, "Loss by position", "token position in document (bucket middle, log scale)", "mean token loss (nats, 95% interval)")


def _plot_sliding(models, path: Path) -> Path:
    series = {}
    for name, m in models.items():
        rows = m["sliding_window"]["contexts"]
        cs = sorted(int(c) for c in rows)
        cells = [rows.get(c, rows.get(str(c))) for c in cs]
        series[name] = ([max(c, 1) for c in cs], [r["loss"] for r in cells], [r.get("interval") for r in cells])
    block = next(iter(models.values()))["sliding_window"]["block"]
    return _log2_chart(
        series,
        path,
        f"Loss of the final {block} tokens as the context grows",
        "context before the final block (tokens, log scale; 0 shown at 1)",
        "block loss (nats, 95% interval over documents)",
    )


def line_with_interval(ax, x, y, intervals, label: str, bars: bool = False) -> None:
    """One model's line with its 95% intervals: error bars, or a shaded band."""
    (line,) = ax.plot(x, y, marker="o", label=label)
    have = [(xi, i) for xi, i in zip(x, intervals) if i]
    if not have:
        return
    xs, lo, hi = [h[0] for h in have], [h[1][0] for h in have], [h[1][1] for h in have]
    if bars:
        ys = [yi for yi, i in zip(y, intervals) if i]
        ax.errorbar(xs, ys, yerr=[[a - b for a, b in zip(ys, lo)], [b - a for a, b in zip(ys, hi)]], fmt="none", ecolor=line.get_color(), capsize=3)
    else:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def _log2_chart(series: dict[str, tuple[list, list, list]], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """One line per model over a log-2 token axis, with its 95% band."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (x, y, intervals) in series.items():
        line_with_interval(ax, x, y, intervals, name)
    _log2_axis(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG at `path` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(curves: dict[str, dict[int, float]], path: Path, reference: str | None = None) -> Path:
    """Training loss against step, one line per run; with a `reference` run, a second panel shows
    each run's loss minus the reference's at the same steps (same batches: the noise cancels)."""
    plt = pyplot()
    panels = 2 if reference in curves else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4), squeeze=False)
    for name, curve in curves.items():
        steps = sorted(curve)
        axes[0, 0].plot(steps, [curve[s] for s in steps], marker=".", label=name)
        if panels == 2 and name != reference:
            ref = curves[reference]
            shared = [s for s in steps if s in ref]
            axes[0, 1].plot(shared, [curve[s] - ref[s] for s in shared], marker=".", label=f"{name} - {reference}")
    axes[0, 0].set_ylabel("training loss (nats)")
    axes[0, 0].set_title("Training loss")
    if panels == 2:
        axes[0, 1].axhline(0, color="grey", lw=1)
        axes[0, 1].set_ylabel("loss difference (nats)")
        axes[0, 1].set_title(f"Training loss minus {reference}'s (same batches)")
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
