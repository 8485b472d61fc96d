"""`ittt moshi-eval`: text and audio loss over long held-out conversations, by time into the
conversation, for several Moshi models in one report with plots.

Each conversation runs through each model whole, as one conversation (positions from 0, fast
weights from the pretrained ones), in pieces of `piece` steps: moshi's streaming state carries
the KV cache (its ring widened to hold a piece, `speech.kv_cache`) and the fast weights from
piece to piece, so the losses are those of one `LMModel.forward` over the whole conversation
(tested), while memory stays bounded by the piece and the model's context, whatever the length.
Conversations longer than the context are the point: attention sees the last `context` steps,
the fast weights everything before.

A separate command from `ittt eval`: that one reads transformers models and token documents;
this one reads Moshi weights (moshi's layout, `save_ttt`'s files) and Mimi codes.

Metrics, nats per value over the positions `LMModel.forward` predicts (values -1 are missing):
``text`` (every text step, padding included), ``text_words`` (steps whose target is a word piece,
not padding), ``audio`` (the model's audio codebooks), ``audio_semantic`` (codebook 0, Mimi's
semantic one). A value at step ``t`` falls in the time bucket of ``t / 12.5`` seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import write_atomic
from ..speech.kv_cache import widen_kv_caches
from ..speech.loading import Streams, load_lm, resolve_device, safetensors_file
from ..speech.transcript import FRAME_RATE
from .intervals import ratio_interval
from .report import _figure, _save

METRICS = ("text", "text_words", "audio", "audio_semantic")
MODEL_KEYS = ("ttt", "clip_tau", "yarn")


@dataclass(frozen=True)
class ModelSpec:
    """``NAME=PATH[,ttt=FILE][,clip_tau=X][,yarn=F]``: PATH a moshi ``model.safetensors`` or a
    folder holding one (and ``ttt.safetensors``, then used unless ``ttt=none``)."""

    name: str
    weights: Path
    ttt: Path | None = None
    clip_tau: float | None = None
    yarn: float | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        head, *options = text.split(",")
        name, sep, path = head.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {text!r}: expected NAME=PATH[,ttt=FILE][,clip_tau=X][,yarn=F]")
        opts = {}
        for option in options:
            key, sep, value = option.partition("=")
            if key not in MODEL_KEYS or not sep:
                raise ValueError(f"--model {text!r}: unknown option {option!r}; options are {', '.join(k + '=...' for k in MODEL_KEYS)}")
            opts[key] = value
        weights, ttt = Path(path), None
        if weights.is_dir():
            ttt = weights / "ttt.safetensors" if (weights / "ttt.safetensors").is_file() else None
            weights = weights / "model.safetensors"
        if "ttt" in opts:
            ttt = None if opts["ttt"].lower() == "none" else Path(opts["ttt"])
        try:
            numbers = {k: float(opts[k]) for k in ("clip_tau", "yarn") if k in opts}
        except ValueError:
            raise ValueError(f"--model {text!r}: clip_tau and yarn take numbers") from None
        return cls(name, weights, ttt, **numbers)

    def check(self) -> None:
        """The files exist and the options fit, before anything runs."""
        try:
            safetensors_file(self.weights, "model weights")
            if self.ttt is not None:
                safetensors_file(self.ttt, "TTT weights")
            elif self.clip_tau is not None or self.yarn is not None:
                raise ValueError("clip_tau and yarn need an In-Place TTT model (a ttt.safetensors)")
        except ValueError as e:
            raise ValueError(f"--model {self.name}: {e}") from None

    def load(self, lm_kwargs: dict | None, device, dtype):
        rope_scaling = None
        if self.yarn is not None:
            from moshi.models.loaders import _lm_kwargs as moshi_7b

            context = (lm_kwargs or moshi_7b)["context"]
            rope_scaling = {"rope_type": "yarn", "factor": self.yarn, "original_max_position_embeddings": context}
        try:
            return load_lm(
                self.weights,
                lm_kwargs,
                ttt=self.ttt,
                clip_tau=... if self.clip_tau is None else self.clip_tau,
                rope_scaling=rope_scaling,
                device=device,
                dtype=dtype,
            )
        except ValueError as e:
            raise ValueError(f"--model {self.name}: {e}") from None


def conversation_nll(lm, codes: torch.Tensor, piece: int) -> dict[str, torch.Tensor]:
    """Per-value loss of one conversation ``codes [K, T]``: ``text [T]``, ``audio [dep_q, T]``
    (float64, NaN where nothing is predicted) and ``words [T]`` (the text target is a word piece)."""
    from moshi.models.lm_utils import _delay_sequence, _undelay_sequence

    if lm.fuser is not None:
        raise ValueError("moshi-eval reads unconditioned models only (this LMModel has a condition fuser)")
    K, T = codes.shape
    device = next(lm.parameters()).device
    codes = codes.to(device)[None]
    initial = lm._get_initial_token()
    delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], 2)  # as LMModel.forward
    steps = torch.full((1 + lm.dep_q, T), float("nan"), dtype=torch.float64)  # loss at each step, delayed time
    with torch.no_grad(), lm.streaming(1):
        widen_kv_caches(lm, piece)
        for a in range(0, T, piece):
            b = min(T, a + piece)
            out, text_logits = lm.forward_text(delayed[:, :, a:b])
            target = delayed[:, :, a + 1 : b + 1]
            audio_logits = lm.forward_depformer_training(target, out)
            steps[0, a:b] = _nll(text_logits[0, 0], target[0, 0])
            for k in range(lm.dep_q):
                steps[1 + k, a:b] = _nll(audio_logits[0, k], target[0, lm.audio_offset + k])
    values, _ = _undelay_sequence(lm.delays[: 1 + lm.dep_q], steps[None])  # back to the codes' time, NaN past the end
    values = values[0]
    values[codes[0, : 1 + lm.dep_q].cpu() == lm.zero_token_id] = float("nan")  # missing values: no loss
    text_target = codes[0, 0].cpu()
    words = (text_target != lm.text_padding_token_id) & (text_target != lm.end_of_text_padding_id) & ~values[0].isnan()
    return {"text": values[0], "audio": values[1:], "words": words}


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log p(target)`` per row of ``logits [P, V]``; NaN where the target is not a value (initial or missing)."""
    V = logits.shape[-1]
    valid = (target >= 0) & (target < V)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, target.clamp(0, V - 1)[:, None])[:, 0]
    return torch.where(valid, -logp, torch.nan).double().cpu()


def bucket_sums(nll: dict[str, torch.Tensor], bucket_steps: int, n_buckets: int) -> dict[str, dict[str, list]]:
    """Per metric, the loss sum and count of values in each time bucket of `bucket_steps` steps."""
    values = {
        "text": nll["text"][None],
        "text_words": torch.where(nll["words"], nll["text"], torch.nan)[None],
        "audio": nll["audio"],
        "audio_semantic": nll["audio"][:1],
    }
    out = {}
    for metric, v in values.items():
        bucket = (torch.arange(v.shape[-1]) // bucket_steps).expand_as(v)
        keep = ~v.isnan()
        sums = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket[keep], v[keep])
        counts = torch.zeros(n_buckets, dtype=torch.long).index_add_(0, bucket[keep], torch.ones_like(bucket[keep]))
        out[metric] = {"sum": sums.tolist(), "count": counts.tolist()}
    return out


@dataclass
class MoshiEvalSettings:
    models: list[str]  # ModelSpec texts
    data: list[str]  # codes files / folders of them / moshi-finetune manifests
    out: Path = Path("moshi-eval")
    lm_kwargs: dict | None = None
    steps_per_forward: int = 250  # --steps-per-forward (20 s of a conversation per forward)
    bucket_minutes: float = 1.0
    device: str = "auto"
    dtype: str = "auto"
    mimi: Path | None = None  # for manifests
    mimi_config: dict | None = None
    tokenizer: Path | None = None
    specs: list[ModelSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = [ModelSpec.parse(m) for m in self.models]
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"--model: each model needs its own name; got {names}")
        if not self.specs:
            raise ValueError("--model: give at least one model")
        for spec in self.specs:
            spec.check()
        if self.steps_per_forward < 1 or not self.bucket_minutes > 0:
            raise ValueError("--steps-per-forward must be >= 1 and --bucket-minutes > 0")


def conversation_files(settings: MoshiEvalSettings) -> list[Path]:
    """The codes files of `settings.data`; manifests are encoded first into ``OUT/codes/<manifest>/``."""
    files: list[Path] = []
    for p in map(Path, settings.data):
        if p.suffix == ".jsonl":
            files += _encoded(p, settings)
        elif p.is_dir():
            files += sorted(p.rglob("*.safetensors"))
        elif p.is_file() and p.suffix == ".safetensors":
            files.append(p)
        else:
            raise ValueError(f"--data: {p} is neither a codes file (.safetensors), a folder of them, nor a manifest (.jsonl)")
    if not files:
        raise ValueError(f"--data: {settings.data} holds no conversations")
    return files


def _encoded(manifest: Path, settings: MoshiEvalSettings) -> list[Path]:
    from ..speech.encode import EncodeSettings, codes_path, encode_manifest, read_manifest

    if settings.mimi is None or settings.tokenizer is None:
        raise ValueError(f"--data {manifest}: a manifest needs --mimi and --tokenizer to be encoded")
    out = Path(settings.out) / "codes" / manifest.stem
    device, _ = resolve_device(settings.device, "float32")
    summary = encode_manifest(EncodeSettings(manifest, settings.mimi, settings.tokenizer, out, settings.mimi_config, settings.lm_kwargs, device=str(device)))
    failed = {path for path, _ in summary.failed}
    return [codes_path(out, c) for c in read_manifest(manifest) if c.path not in failed]


def evaluate_moshi(settings: MoshiEvalSettings, progress: bool = True) -> Path:
    """Run every model on every conversation; write ``results.json``, ``report.md`` and plots; returns the report."""
    from tqdm.auto import tqdm

    from ..families.moshi.codes import read_conversation

    device, dtype = resolve_device(settings.device, settings.dtype)
    files = conversation_files(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": _settings_dict(settings), "device": str(device), "dtype": str(dtype).removeprefix("torch."), "models": {}}
    bucket_steps = round(settings.bucket_minutes * 60 * FRAME_RATE)
    with tqdm(total=len(files) * len(settings.specs), desc="moshi-eval", unit="conversation", disable=not progress) as bar:
        for spec in settings.specs:
            lm = spec.load(settings.lm_kwargs, device, dtype)
            streams = Streams.of(lm)
            conversations = [read_conversation(f, lm.num_codebooks, streams.text_card, streams.card) for f in files]
            n_buckets = max(1, math.ceil(max(c.shape[1] for c in conversations) / bucket_steps))
            per_file = {}
            for f, codes in zip(files, conversations):
                per_file[str(f)] = bucket_sums(conversation_nll(lm, codes, settings.steps_per_forward), bucket_steps, n_buckets)
                bar.update(1)
            results["models"][spec.name] = {
                "weights": str(spec.weights),
                "ttt": None if spec.ttt is None else str(spec.ttt),
                "clip_tau": spec.clip_tau,
                "yarn": spec.yarn,
                "ttt_layers": getattr(lm, "inplace_ttt", {}).get("layers", []),
                "context_steps": lm.transformer.layers[0].self_attn.context,
                "buckets": _pooled(per_file, n_buckets),
                "conversations": per_file,
            }
            del lm
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    return write_moshi_report(results, out)


def _pooled(per_file: dict, n_buckets: int) -> dict[str, dict[str, list]]:
    """Per metric and bucket: the mean loss over every value of every conversation, the count, and a
    95% bootstrap interval of that mean resampling conversations (`eval.intervals`; None below two)."""
    pooled = {}
    for metric in METRICS:
        per_conversation = [([c[metric]["sum"][i] for c in per_file.values()], [c[metric]["count"][i] for c in per_file.values()]) for i in range(n_buckets)]
        sums, counts = [sum(s) for s, _ in per_conversation], [sum(n) for _, n in per_conversation]
        pooled[metric] = {
            "loss": [s / n if n else None for s, n in zip(sums, counts)],
            "count": counts,
            "interval": [ratio_interval(s, n) for s, n in per_conversation],
        }
    return pooled


def _settings_dict(s: MoshiEvalSettings) -> dict:
    return {
        "models": s.models,
        "data": [str(d) for d in s.data],
        "steps_per_forward": s.steps_per_forward,
        "bucket_minutes": s.bucket_minutes,
        "lm_kwargs": s.lm_kwargs,
    }


def _bucket_labels(n: int, minutes: float) -> list[str]:
    return [f"{i * minutes:g}-{(i + 1) * minutes:g}" for i in range(n)]


def write_moshi_report(results: dict, out: Path) -> Path:
    models = results["models"]
    s = results["settings"]
    n = max(len(m["buckets"]["text"]["loss"]) for m in models.values())
    labels = _bucket_labels(n, s["bucket_minutes"])
    first = next(iter(models.values()))
    lines = [
        "# Moshi long-conversation evaluation",
        "",
        "Models: "
        + ", ".join(
            f"`{name}` ({m['weights']}"
            + (f", TTT layers {m['ttt_layers']}" if m["ttt"] else ", no TTT")
            + (f", clip_tau {m['clip_tau']}" if m["clip_tau"] is not None else "")
            + (f", YaRN x{m['yarn']:g}" if m["yarn"] else "")
            + ")"
            for name, m in models.items()
        )
        + ".",
        f"{len(first['conversations'])} conversations; time buckets of {s['bucket_minutes']:g} min; pieces of {s['steps_per_forward']} steps; "
        f"attention context {first['context_steps']} steps ({first['context_steps'] / FRAME_RATE / 60:.2f} min); device {results['device']}, dtype {results['dtype']}.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric} loss (nats) by minute of the conversation", "", "| model | " + " | ".join(labels) + " |", "|---|" + "---|" * n]
        for name, m in models.items():
            losses, intervals = m["buckets"][metric]["loss"], m["buckets"][metric]["interval"]
            cells = ["-" if x is None else f"{x:.3f}" + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]") for x, ci in zip(losses, intervals)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Values per bucket: {first['buckets'][metric]['count']}; [95% bootstrap interval over conversations].", ""]
    plot = _plot(models, s["bucket_minutes"], out / "moshi_loss_by_minute.png")
    lines += ["## Plot", "", f"![{plot.stem}]({plot.name})", "", "Every number, per conversation too, is in `results.json`."]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def _plot(models: dict, minutes: float, path: Path) -> Path:
    plt = _figure()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), squeeze=False)
    for ax, metric in zip(axes.flat, METRICS):
        for name, m in models.items():
            losses, intervals = m["buckets"][metric]["loss"], m["buckets"][metric]["interval"]
            x = [(i + 0.5) * minutes for i in range(len(losses))]
            line = ax.plot(x, losses, marker="o", label=name)[0]
            banded = [(xi, ci) for xi, ci in zip(x, intervals) if ci is not None]
            if banded:
                ax.fill_between([b[0] for b in banded], [b[1][0] for b in banded], [b[1][1] for b in banded], color=line.get_color(), alpha=0.15)
        context = next(iter(models.values()))["context_steps"] / FRAME_RATE / 60
        ax.axvline(context, color="grey", ls="--", lw=1, label="attention context")
        ax.set(title=f"{metric} loss", xlabel="minutes into the conversation (bucket middle)", ylabel="mean loss (nats)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    return _save(fig, path)
