"""`ittt eval`: several models, identical inputs, one report with 95% intervals and paired differences.

Inputs are built once (RULER and recall samples from a seed with the shared tokenizer; held-out
documents tokenized once) and every model runs on exactly those token ids, `batch` rows at a time
(the RULER-style samples of one length together, whatever their task); only the tasks asked for
run. Each model is a plain transformers directory (or a GGUF file in one), or an In-Place TTT one;
for the latter `clip_tau` applies. Losses get bootstrap intervals over documents, accuracies over samples (`intervals`);
every other model is compared with the baseline unit by unit (`paired`).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..assets import corpus_files
from ..config import CONFIG_KEY
from ..documents import read_documents
from ..families import set_clip_tau
from ..families.clip import clip_report
from ..families.hf import is_ttt_checkpoint, load_causal_lm, looks_local, quiet_transformers
from ..files import write_atomic
from ..finite import finite_json
from .intervals import mean_interval
from .loss import LOSS_TASK, TEXT_TASKS, WINDOW_TASK, batched_nll, bucket_edges, loss_by_position, sliding_window
from .paired import paired_mean, paired_ratio
from .recall import TASK as RECALL_TASK
from .recall import chance, make_recall, recall_scores
from .report import write_report
from .ruler import TASK_NAMES, make_samples, score
from .stream import greedy

ALL_TASKS = (LOSS_TASK, WINDOW_TASK, RECALL_TASK) + TASK_NAMES
RULER_CLOCK = "ruler"  # the RULER-style tasks share batches, so their time is counted together


@dataclass
class EvalSettings:
    models: list[str]
    names: list[str] | None = None  # how the report calls each model (default: its directory's name)
    baseline: str | None = None  # the model (by name) every other one is compared with, unit by unit; default: the first
    gguf_file: str | None = None  # a --model folder holding a file of this name is read from that GGUF checkpoint
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    samples: int = 10
    data: list[str] = field(default_factory=list)  # held-out documents (loss; and a text haystack); default: the embedded corpus's
    clip_tau: float | None = None
    seed: int = 0
    tokens_per_forward: int = 2048  # --tokens-per-forward: long inputs are read through the cache in pieces of this many
    final_block: int = 256  # --final-block: the sliding-window view scores each document's last this many tokens
    contexts: list[int] | None = None  # sliding-window contexts; None: 0 and each length minus the block
    documents: int = 16  # held-out documents read (the first ones)
    chat_template: bool = False  # wrap each task prompt in the tokenizer's chat template (instruct models)
    passages: int | None = None  # cut the documents into up to this many passages of max(lengths) + 1 tokens (the loss task's units)
    recall_pairs: int = 16
    batch: int = 8  # rows per forward
    dtype: str = "float32"
    out: str = "eval-report"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(ALL_TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks: {list(ALL_TASKS)}")
        if not self.models:
            raise ValueError("give at least one --model")
        if self.names is not None and (len(self.names) != len(self.models) or len(set(self.names)) != len(self.names)):
            raise ValueError(f"names must be one distinct name per model ({len(self.models)}); got {self.names}")
        if not self.data:
            self.data = corpus_files("heldout")
        if any(n < 16 for n in self.lengths):
            raise ValueError(f"lengths must be >= 16 tokens; got {self.lengths}")
        for name in ("samples", "tokens_per_forward", "final_block", "documents"):  # each is a count: 0 or less gave empty or NaN reports
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        missing = [m for m in self.models if not Path(m).expanduser().exists() and looks_local(m)]
        if missing:
            raise ValueError(f"--model: no such model folder: {', '.join(missing)}")
        for name in ("batch", "recall_pairs", "passages"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if self.contexts is not None and any(c < 0 for c in self.contexts):
            raise ValueError(f"contexts must be >= 0 tokens; got {self.contexts}")
        names = self.model_names()
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"--baseline must name one of the models {names}; got {self.baseline!r}")
        if self.gguf_file is not None:
            if Path(self.gguf_file).name != self.gguf_file:
                raise ValueError(f"--gguf-file must be a file name inside a --model folder, not a path; got {self.gguf_file!r}")
            if not any(self.gguf_path(m) for m in self.models):
                raise ValueError(f"--gguf-file: no --model folder holds {self.gguf_file!r}")

    def model_names(self) -> list[str]:
        """How the report calls each model: `names`, else each folder's name (numbered where two agree)."""
        if self.names is not None:
            return self.names
        names = [Path(p).name or str(p) for p in self.models]
        return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]

    def gguf_path(self, model: str) -> str | None:
        """`gguf_file` when the `model` folder holds it (that model is read from it), else None."""
        return self.gguf_file if self.gguf_file is not None and (Path(model).expanduser() / self.gguf_file).is_file() else None


def parse_lengths(text: str) -> list[int]:
    """``"1k,2k,4096"`` -> ``[1024, 2048, 4096]``."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            out.append(int(float(part[:-1]) * 1024) if part.endswith("k") else int(part))
        except ValueError:
            raise ValueError(f"--lengths: {part!r} is not a token count like 512, 4k or 32k") from None
    return sorted(set(out))


def _what_clipping_keeps(model, docs: list, generated: dict, tokenizer, max_len: int, device) -> dict | None:
    """What `--clip-tau` keeps of each chunk update (`families.clip.clip_report`), on the first held-out
    document or else the first prompt: a clipped model can be, to within that share, the model without TTT."""
    ids = docs[0][:max_len] if docs else next((torch.tensor(g[0].ids) for g in generated.values()), None)
    if ids is None:
        return None
    report = clip_report(model, ids[None].to(device))
    return {**report.to_dict(), "summary": report.summary()}


def model_to_evaluate(path: str, dtype: torch.dtype, clip_tau: float | None, gguf_file: str | None = None):
    """A model of `--model` through the one loader (`families.hf.load_causal_lm`; from `gguf_file`
    in its folder when given), in eval mode, with `--clip-tau` on its TTT layers."""
    try:
        model = load_causal_lm(path, gguf_file=gguf_file, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--model {e}{f' (--gguf-file {gguf_file})' if gguf_file else ''}") from None
    if clip_tau is not None and is_ttt_checkpoint(path):
        set_clip_tau(model, clip_tau)
    return model.eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_tokenizer(paths: list[str], gguf_files: list[str | None] | None = None):
    """The models' shared tokenizer (a folder's tokenizer files, else the one its GGUF file carries);
    different tokenizers would mean different inputs."""
    from transformers import AutoTokenizer

    tokenizers = []
    for p, gguf in zip(paths, gguf_files or [None] * len(paths)):
        from_gguf = {"gguf_file": gguf} if gguf and not any((Path(p) / f).is_file() for f in TOKENIZER_FILES) else {}
        try:
            with quiet_transformers():
                tokenizers.append(AutoTokenizer.from_pretrained(p, **from_gguf))
        except (OSError, ValueError) as e:
            raise ValueError(f"--model {p}: no tokenizer loads from it ({str(e).strip().splitlines()[0]})") from None
    first = tokenizers[0].get_vocab()
    for p, tok in zip(paths[1:], tokenizers[1:]):
        if tok.get_vocab() != first:
            raise ValueError(f"{p} has a different tokenizer than {paths[0]}: models must share one to see identical inputs")
    return tokenizers[0]


def check_positions(paths: list[str], longest: int) -> None:
    """Refuse lengths past a model's position table (learned positions: an index error deep in the
    forward); for a RoPE model, which extrapolates, only warn. Read from each local config.json."""
    for path in paths:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            continue  # a hub id: its config is transformers' to fetch
        data = json.loads(config_file.read_text())
        limit = data.get("max_position_embeddings", data.get("n_positions"))
        if limit is None or longest <= limit:
            continue
        if any(key in data for key in ("rope_theta", "rope_parameters", "rope_scaling")):
            warnings.warn(f"--lengths up to {longest} is past {path}'s max_position_embeddings {limit}: a RoPE model extrapolates there", stacklevel=2)
        else:
            raise ValueError(f"--lengths: {longest} tokens is past {path}'s {limit} learned positions: give lengths up to {limit}")


def evaluate(settings: EvalSettings, preamble: list[str] = ()) -> Path:
    """Run the tasks asked for, write results.json, report.md (`preamble`: markdown lines after
    its title) and the plots; returns the report path."""
    out = Path(settings.out)
    dtype = getattr(torch, settings.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ggufs = [settings.gguf_path(m) for m in settings.models]
    tokenizer = load_tokenizer(settings.models, ggufs)
    check_positions(settings.models, max(settings.lengths))
    texts = read_documents(settings.data) if settings.data else []
    haystack = " ".join(texts) or None
    docs, read = [], texts[: settings.documents] if any(t in settings.tasks for t in TEXT_TASKS) else []
    if read:
        ids = tokenizer(read, add_special_tokens=False)["input_ids"]
        docs = [torch.tensor(d) for d in ids if len(d) > 1]
        if settings.passages is not None:
            docs = passages(docs, max(settings.lengths) + 1, settings.passages)
        docs = [d[: max(settings.lengths) + 1] for d in docs]  # the longest length of predicted tokens
    ruler_tasks = [t for t in settings.tasks if t in TASK_NAMES]
    # every RULER sample of one length batched together, those that generate longest first: a row
    # leaves its batch when it has its answer's tokens, so rows of like lengths share the steps
    generated = {
        n: sorted(
            (s for t in ruler_tasks for s in make_samples(t, tokenizer, n, settings.samples, settings.seed, haystack, settings.chat_template)),
            key=lambda s: -s.max_new_tokens,
        )
        for n in settings.lengths
        if ruler_tasks
    }
    recall = (
        [make_recall(tokenizer, n, settings.samples, settings.seed, settings.recall_pairs) for n in settings.lengths] if RECALL_TASK in settings.tasks else []
    )
    max_len = max(settings.lengths)
    edges = bucket_edges(max((len(d) - 1 for d in docs), default=max_len))
    contexts = settings.contexts if settings.contexts is not None else [0] + [n - settings.final_block for n in settings.lengths if n > settings.final_block]
    text_tasks = [t for t in TEXT_TASKS if t in settings.tasks] if docs else []

    names = settings.model_names()
    baseline = settings.baseline or names[0]
    results = {"settings": asdict(settings), "device": device, "baseline": baseline, "documents": len(docs), "documents_read": len(read), "models": {}}
    if recall:
        results["recall"] = {"chance": 100.0 * chance(tokenizer), "gap": {str(g[0].length): g[0].gap for g in recall}}
    per_model = sum(len(g) for g in [*generated.values(), *recall]) + len(docs) * len(text_tasks)
    with tqdm(total=len(settings.models) * per_model, desc="eval", unit="item") as bar:
        for name, path, gguf in zip(names, settings.models, ggufs):
            started = time.perf_counter()
            model = model_to_evaluate(path, dtype, settings.clip_tau, gguf).to(device)
            entry = {"path": path, "gguf_file": gguf, "ttt": hasattr(model.config, CONFIG_KEY), "ruler": {}, "task_seconds": {}}
            if entry["ttt"] and settings.clip_tau is not None:
                entry["clipping"] = _what_clipping_keeps(model, docs, generated, tokenizer, max_len, device)
            clock = _Clock(entry["task_seconds"])
            for length, group in generated.items():
                clock.start(RULER_CLOCK)
                bar.set_postfix_str(f"{name} RULER {length}")
                answered = {}
                for k in range(0, len(group), settings.batch):
                    batch = group[k : k + settings.batch]
                    prompts = [torch.tensor(s.ids, device=device) for s in batch]
                    new = greedy(
                        model, prompts, [s.max_new_tokens for s in batch], settings.tokens_per_forward, _stop_ids(model, tokenizer), _pad_id(tokenizer)
                    )
                    for s, ids in zip(batch, new):
                        answered[s.task, s.index] = (s, tokenizer.decode(ids, skip_special_tokens=True))
                    bar.update(len(batch))
                for task in ruler_tasks:
                    cell = entry["ruler"].setdefault(task, {})[str(length)] = {"scores": [], "outputs": []}
                    for index in range(settings.samples):
                        s, text = answered[task, index]
                        cell["scores"].append(score(text, s.answers, s.metric))
                        cell["outputs"].append({"index": s.index, "answers": s.answers, "generated": text, "depths": s.depths, "tokens": s.tokens})
                    _accuracy(cell, settings.seed)
            for group in recall:
                clock.start(RECALL_TASK)
                bar.set_postfix_str(f"{name} {RECALL_TASK} {group[0].length}")
                cell = {"scores": recall_scores(model, group, settings.tokens_per_forward, settings.batch)}
                _accuracy(cell, settings.seed)
                entry.setdefault(RECALL_TASK, {})[str(group[0].length)] = cell
                bar.update(len(group))
            on_device = [d.to(device) for d in docs]
            nll = None
            if LOSS_TASK in text_tasks:
                clock.start(LOSS_TASK)
                bar.set_postfix_str(f"{name} {LOSS_TASK}")
                nll = batched_nll(model, on_device, settings.tokens_per_forward, settings.batch)
                entry["loss_by_position"] = loss_by_position(nll, edges, settings.seed)
                bar.update(len(docs))
            if WINDOW_TASK in text_tasks:
                clock.start(WINDOW_TASK)
                bar.set_postfix_str(f"{name} {WINDOW_TASK}")
                entry["sliding_window"] = sliding_window(
                    model, on_device, contexts, settings.final_block, settings.tokens_per_forward, settings.batch, settings.seed, known=nll
                )
                bar.update(len(docs))
            clock.start(None)
            entry["seconds"] = time.perf_counter() - started
            results["models"][name] = entry
            del model
    for name, entry in results["models"].items():
        if name != baseline:
            entry["paired"] = compare(entry, results["models"][baseline], settings.seed)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run that fails leaves no folder
    write_atomic(out / "results.json", json.dumps(finite_json(results), indent=1, allow_nan=False) + "\n")
    return write_report(results, out, preamble)


def compare(entry: dict, base: dict, seed: int) -> dict:
    """`entry`'s model minus the baseline's on every number both have, unit by unit (samples'
    scores in percentage points, documents' losses in nats), each with its 95% interval."""
    paired: dict = {}
    for task, cells in entry["ruler"].items():
        paired.setdefault("ruler", {})[task] = {n: paired_mean(c["scores"], base["ruler"][task][n]["scores"], seed, 100.0) for n, c in cells.items()}
    if RECALL_TASK in entry:
        paired[RECALL_TASK] = {n: paired_mean(c["scores"], base[RECALL_TASK][n]["scores"], seed, 100.0) for n, c in entry[RECALL_TASK].items()}
    if "loss_by_position" in entry:
        a, b = entry["loss_by_position"], base["loss_by_position"]
        paired["loss_by_position"] = [
            paired_ratio([d[k] for d in a["sums"]], [d[k] for d in b["sums"]], [d[k] for d in a["counts"]], seed) for k in range(len(a["loss"]))
        ]
    if "sliding_window" in entry:
        rows, base_rows = entry["sliding_window"]["contexts"], base["sliding_window"]["contexts"]
        paired["sliding_window"] = {c: paired_mean(r["per_document"], base_rows[c]["per_document"], seed) for c, r in rows.items()}
    return paired


class _Clock:
    """Seconds spent per task, added up into `into` (a model's ``task_seconds``): where the time goes."""

    def __init__(self, into: dict):
        self.into, self.task, self.since = into, None, time.perf_counter()

    def start(self, task: str | None) -> None:
        """Stop the running task's clock and start `task`'s (None: stop only)."""
        now = time.perf_counter()
        if self.task is not None:
            self.into[self.task] = self.into.get(self.task, 0.0) + now - self.since
        self.task, self.since = task, now


def passages(docs: list[torch.Tensor], length: int, count: int) -> list[torch.Tensor]:
    """Up to `count` non-overlapping passages of `length` tokens, cut from the starts of the
    documents onwards and taken evenly across all of them (a short tail is dropped)."""
    cut = [d[i : i + length] for d in docs for i in range(0, len(d) - length + 1, length)]
    step = max(1, len(cut) / count) if cut else 1
    return [cut[int(k * step)] for k in range(min(count, len(cut)))]


def _accuracy(cell: dict, seed: int) -> None:
    """A cell's accuracy (%) and its 95% interval over samples."""
    scores = cell["scores"]
    cell["accuracy"] = 100.0 * sum(scores) / len(scores)
    interval = mean_interval(scores, seed)
    cell["interval"] = [100.0 * x for x in interval] if interval else None


def _stop_ids(model, tokenizer) -> set[int]:
    """Where an answer ends: the tokenizer's EOS and every id the model's `generation_config` lists
    (a chat model's end of turn, which `generate` stops at too)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    return {i for i in [tokenizer.eos_token_id, *ids] if i is not None}


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
