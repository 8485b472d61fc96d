"""The evaluation report: `report.md` with tables, and PNG plots with one line per model.

Every compared number carries its 95% bootstrap interval: ``3.412 [3.380, 3.441]`` in the
tables, a shaded band (losses) or error bars (accuracies) in the plots. With two models or more,
every table has a column and every plot a panel per model for its paired difference from the
baseline (`paired`): ``-0.012 [-0.020, -0.004]``, the same units compared one by one."""

from __future__ import annotations

from pathlib import Path

from ..files import write_atomic
from .loss import TEXT_TASKS


def _fmt(x, digits=3, signed=False) -> str:
    return "-" if x is None else f"{x:{'+' if signed else ''}.{digits}f}"


def with_interval(x, interval, digits=3, signed=False) -> str:
    """A table cell: ``3.412 [3.380, 3.441]``, the number alone without an interval, ``-`` without a
    number; `signed` (a difference): ``-0.012 [-0.020, +0.003]``."""
    if x is None:
        return "-"
    return _fmt(x, digits, signed) + (f" [{_fmt(interval[0], digits, signed)}, {_fmt(interval[1], digits, signed)}]" if interval else "")


def signed(paired: dict | None, digits=3) -> str:
    """A paired difference's cell, signs shown: ``-0.012 [-0.020, -0.004]``; ``-`` without one."""
    if not paired or paired["difference"] is None:
        return "-"
    interval = paired["interval"]
    return f"{paired['difference']:+.{digits}f}" + (f" [{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]" if interval else "")


def _human(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _others(results: dict) -> list[str]:
    """The models compared with the baseline, in the report's order."""
    return [n for n in results["models"] if n != results["baseline"]]


def _header(first: list[str], results: dict, last: list[str] = ()) -> list[str]:
    """A table's header and rule: `first` columns, one per model, one per paired difference, then `last`."""
    cols = [*first, *results["models"], *(f"{n} - {results['baseline']}" for n in _others(results)), *last]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _row(first: list[str], cells: list[str], pairs: list[str], last: list[str] = ()) -> str:
    return "| " + " | ".join([*first, *cells, *pairs, *last]) + " |"


def _what_ran(results: dict) -> list[str]:
    """The report's opening: the models, what was compared with what, and only the settings of the
    tasks that ran."""
    models, s = results["models"], results["settings"]
    tasks = s["tasks"]
    text, generated = any(t in TEXT_TASKS for t in tasks), any(t not in TEXT_TASKS for t in tasks)
    lines = ["Models: " + ", ".join(f"`{n}` ({_describe(m)})" for n, m in models.items()) + "."]
    if _others(results):
        units = " and ".join(u for u, ran in (("documents for losses", text), ("samples for accuracies", generated)) if ran)
        lines.append(
            f"Paired differences: each model minus `{results['baseline']}` (the baseline), unit by unit on the same inputs "
            f"({units}), with 95% bootstrap intervals over those units."
        )
    lines.append("Tasks run: " + ", ".join(tasks) + ".")
    if generated:
        lines.append(f"{s['samples']} samples per task and length at {', '.join(_human(n) for n in s['lengths'])} tokens.")
    if text:
        source, length = ", ".join(Path(d).name for d in s["data"]), max(s["lengths"]) + 1
        units = f"{results['documents']} passages of {length} tokens cut from" if s["passages"] else f"the first {length} tokens of each of"
        lines.append(f"Held-out text: {units} {results['documents_read']} documents of {source} (`--documents {s['documents']}`: the first ones).")
    clip = (f"clip_tau {s['clip_tau']}; " if s["clip_tau"] is not None else "no clipping (clip_tau None); ") if any(m["ttt"] for m in models.values()) else ""
    lines.append(f"Seed {s['seed']}; {clip}device {results['device']}, dtype {s['dtype']}.")
    for name, m in models.items():
        kept = m.get("clipping")
        if kept:
            lines.append(f"Clipping kept a mean {kept['mean_factor']:.3g} of each fast-weight update of `{name}` ({kept['summary']}).")
            lines += [f"**Warning:** {w}" for w in kept["warnings"]]
    return lines + [""]


def _describe(m: dict) -> str:
    return m["path"] + (f", GGUF {m['gguf_file']}" if m.get("gguf_file") else "") + (", In-Place TTT" if m["ttt"] else "")


def write_report(results: dict, out: Path, preamble: list[str] = ()) -> Path:
    models = results["models"]
    lines = ["# In-Place TTT evaluation", "", *preamble, *_what_ran(results)]
    plots = []
    lengths = [str(n) for n in results["settings"]["lengths"]]
    tasks = sorted({t for m in models.values() for t in m["ruler"]})
    if tasks:
        lines += ["## RULER-style tasks (accuracy %, 95% interval over samples; differences in percentage points)", "", *_header(["task", "length"], results)]
        for task in tasks:
            for n in lengths:
                cells = [m["ruler"].get(task, {}).get(n, {}) for m in models.values()]
                pairs = [models[o]["paired"]["ruler"][task][n] for o in _others(results)]
                lines.append(
                    _row([task, _human(int(n))], [with_interval(c.get("accuracy"), c.get("interval"), 1) for c in cells], [signed(p, 1) for p in pairs])
                )
            if len(lengths) > 1:
                means = [_mean([m["ruler"][task][n]["accuracy"] for n in lengths]) for m in models.values()]
                diffs = [_mean([models[o]["paired"]["ruler"][task][n]["difference"] for n in lengths]) for o in _others(results)]
                lines.append(_row([task, "mean"], [_fmt(x, 1) for x in means], [f"{x:+.1f}" for x in diffs]))
        lines.append("")
        plots.append(_plot_ruler(results, tasks, lengths, out / "ruler_accuracy.png"))
    if any("recall" in m for m in models.values()):
        info = results["recall"]
        lines += [
            "## Associative recall (accuracy %, 95% interval over samples; differences in percentage points)",
            "",
            f"{results['settings']['recall_pairs']} key-value pairs at the start, all queried at the end, `gap` tokens after the last pair; "
            f"scored teacher-forced (Zoology's MQAR); chance {info['chance']:.2f}%.",
            "",
            *_header(["length", "gap"], results),
        ]
        for n in lengths:
            cells = [with_interval(m["recall"][n]["accuracy"], m["recall"][n]["interval"], 1) for m in models.values()]
            lines.append(_row([_human(int(n)), str(info["gap"][n])], cells, [signed(models[o]["paired"]["recall"][n], 1) for o in _others(results)]))
        lines.append("")
        plots.append(_plot_recall(results, lengths, out / "recall_accuracy.png"))
    if any("loss_by_position" in m for m in models.values()):
        first = next(iter(models.values()))["loss_by_position"]
        edges = first["edges"]
        lines += ["## Loss by position (mean token loss, nats; 95% interval over documents)", "", *_header(["positions"], results, ["tokens", "documents"])]
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            cells = [with_interval(m["loss_by_position"]["loss"][k], m["loss_by_position"]["interval"][k]) for m in models.values()]
            pairs = [signed(models[o]["paired"]["loss_by_position"][k], 4) for o in _others(results)]
            lines.append(_row([f"{_human(a)}-{_human(b)}"], cells, pairs, [str(first["tokens"][k]), str(first["documents"][k])]))
        lines.append("")
        plots.append(_plot_loss(results, out / "loss_by_position.png"))
    if any("sliding_window" in m for m in models.values()):
        lines += sliding_window_section(results)
        plots.append(_plot_sliding(results, out / "sliding_window.png"))
    lines += ["## Plots", "", *(f"![{p.stem}]({p.name})" for p in plots), "", "Every number is in `results.json`."]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def sliding_window_section(results: dict) -> list[str]:
    """The paper's Fig. 2 view as a table: per context, each model's block loss and the paired differences."""
    models = results["models"]
    first = next(iter(models.values()))["sliding_window"]
    lines = [
        f"## Sliding window: loss of the final {first['block']} tokens as the context before them grows",
        "",
        "Mean over documents of each document's block loss (nats), with its 95% interval over documents.",
        "",
        *_header(["context"], results, ["documents"]),
    ]
    for c, row in first["contexts"].items():
        cells = [with_interval(m["sliding_window"]["contexts"][c]["loss"], m["sliding_window"]["contexts"][c]["interval"]) for m in models.values()]
        pairs = [signed(models[o]["paired"]["sliding_window"][c], 4) for o in _others(results)]
        lines.append(_row([_human(int(c))], cells, pairs, [str(row["documents"])]))
    return lines + [""]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


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


def _panels(plt, results: dict, rows: int, cols: int, width: float = 6.5, height: float = 4):
    """A figure of `rows` x `cols` value panels, and below each row a row of difference panels
    when models are compared: ``(fig, value axes, difference axes or None)``, both ``[rows, cols]``."""
    paired = bool(_others(results))
    fig, axes = plt.subplots(rows * (2 if paired else 1), cols, figsize=(width * cols, height * rows * (2 if paired else 1)), squeeze=False)
    return (fig, axes[0::2], axes[1::2]) if paired else (fig, axes, None)


def _colour(results: dict, name: str) -> str:
    """A model's colour, the same in the value and the difference panels."""
    return f"C{list(results['models']).index(name)}"


def _draw(ax, dax, results: dict, x: list, values: dict, differences: dict, bars: bool, unit: str) -> None:
    """Each model's line with its intervals on `ax`; on `dax` (when comparing) each paired difference
    from the baseline with its interval and the zero line."""
    for name, (y, intervals) in values.items():
        line_with_interval(ax, x, y, intervals, name, bars=bars, color=_colour(results, name))
    if dax is None:
        return
    for name, pairs in differences.items():
        y = [p["difference"] if p else None for p in pairs]
        line_with_interval(dax, x, y, [p["interval"] if p else None for p in pairs], f"{name} - {results['baseline']}", bars=bars, color=_colour(results, name))
    dax.axhline(0, color="grey", lw=1)
    dax.set_ylabel(f"paired difference ({unit}, 95% interval)")
    dax.grid(alpha=0.3)
    dax.legend()


def _plot_ruler(results: dict, tasks: list[str], lengths: list[str], path: Path) -> Path:
    plt = pyplot()
    models = results["models"]
    cols = min(4, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes, daxes = _panels(plt, results, rows, cols, 4, 3.2)
    x = [int(n) for n in lengths]
    for k, task in enumerate(tasks):
        ax, dax = axes.flat[k], daxes.flat[k] if daxes is not None else None
        values = {}
        for name, m in models.items():
            cells = [m["ruler"][task][n] for n in lengths]
            values[name] = ([c["accuracy"] for c in cells], [c["interval"] for c in cells])
        differences = {o: [models[o]["paired"]["ruler"][task][n] for n in lengths] for o in _others(results)}
        _draw(ax, dax, results, x, values, differences, True, "points")
        ax.set_title(task)
        ax.set_ylim(-5, 105)
        ax.set_ylabel("accuracy (%, 95% interval)")
        ax.grid(alpha=0.3)
        for a in (ax, dax) if dax is not None else (ax,):
            a.set_xscale("log", base=2)
            a.set_xticks(x, [_human(n) for n in x])
            a.set_xlabel("context length (tokens)")
    for a in list(axes.flat)[len(tasks) :] + (list(daxes.flat)[len(tasks) :] if daxes is not None else []):
        a.axis("off")
    axes.flat[0].legend()
    return save_figure(fig, path)


def _plot_recall(results: dict, lengths: list[str], path: Path) -> Path:
    models = results["models"]
    values = {name: ([m["recall"][n]["accuracy"] for n in lengths], [m["recall"][n]["interval"] for n in lengths]) for name, m in models.items()}
    differences = {o: [models[o]["paired"]["recall"][n] for n in lengths] for o in _others(results)}
    return _chart(
        results,
        [int(n) for n in lengths],
        values,
        differences,
        path,
        labels=("Associative recall", "sequence length (tokens)", "accuracy (%, 95% interval)", "points"),
        bars=True,
        chance=results["recall"]["chance"],
    )


def _plot_loss(results: dict, path: Path) -> Path:
    models = results["models"]
    edges = next(iter(models.values()))["loss_by_position"]["edges"]
    x = [max(1, (a + b) / 2) for a, b in zip(edges[:-1], edges[1:])]
    values = {name: (m["loss_by_position"]["loss"], m["loss_by_position"]["interval"]) for name, m in models.items()}
    differences = {o: models[o]["paired"]["loss_by_position"] for o in _others(results)}
    labels = ("Loss by position", "token position in document (bucket middle, log scale)", "mean token loss (nats, 95% interval)", "nats")
    return _chart(results, x, values, differences, path, labels)


def _plot_sliding(results: dict, path: Path) -> Path:
    models = results["models"]
    first = next(iter(models.values()))["sliding_window"]
    contexts = list(first["contexts"])
    values = {}
    for name, m in models.items():
        rows = [m["sliding_window"]["contexts"][c] for c in contexts]
        values[name] = ([r["loss"] for r in rows], [r["interval"] for r in rows])
    differences = {o: [models[o]["paired"]["sliding_window"][c] for c in contexts] for o in _others(results)}
    labels = (
        f"Loss of the final {first['block']} tokens as the context grows",
        "context before the final block (tokens, log scale; 0 shown at 1)",
        "block loss (nats, 95% interval over documents)",
        "nats",
    )
    return _chart(results, [max(int(c), 1) for c in contexts], values, differences, path, labels)


def _chart(results: dict, x: list, values: dict, differences: dict, path: Path, labels: tuple, bars: bool = False, chance: float | None = None) -> Path:
    """One line per model over a log-2 token axis with its 95% intervals; beside it, when comparing,
    the paired differences from the baseline. `labels`: title, x label, y label, difference unit."""
    title, xlabel, ylabel, unit = labels
    plt = pyplot()
    fig, axes, daxes = _panels(plt, results, 1, 1)
    ax, dax = axes[0, 0], daxes[0, 0] if daxes is not None else None
    _draw(ax, dax, results, x, values, differences, bars, unit)
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    for a in (ax, dax) if dax is not None else (ax,):
        _log2_axis(a)
        a.set_xlabel(xlabel)
    return save_figure(fig, path)


def line_with_interval(ax, x, y, intervals, label: str, bars: bool = False, color: str | None = None) -> None:
    """One model's line with its 95% intervals: error bars, or a shaded band."""
    (line,) = ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", label=label, color=color)
    have = [(xi, yi, i) for xi, yi, i in zip(x, y, intervals) if i and yi is not None]
    if not have:
        return
    xs, ys, lo, hi = [h[0] for h in have], [h[1] for h in have], [h[2][0] for h in have], [h[2][1] for h in have]
    if bars:
        ax.errorbar(xs, ys, yerr=[[a - b for a, b in zip(ys, lo)], [b - a for a, b in zip(ys, hi)]], fmt="none", ecolor=line.get_color(), capsize=3)
    else:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


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
