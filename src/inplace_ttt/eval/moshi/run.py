"""The run of `ittt moshi-eval`: its settings, and every model on every conversation into
``results.json`` and the report, each model also against the baseline, conversation by conversation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ...families.moshi.codes import conversation_files, read_conversation
from ...files import write_atomic
from ...speech.loading import Streams, resolve_device
from ...speech.transcript import FRAME_RATE
from .buckets import bucket_sums, paired, pooled
from .loss import conversation_nll
from .models import ModelSpec
from .report import write_moshi_report


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
    baseline: str | None = None  # the model the others are paired with; None: the first without TTT weights, else the first
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
        if self.baseline is None:
            self.baseline = next((s.name for s in self.specs if s.ttt is None), names[0])
        elif self.baseline not in names:
            raise ValueError(f"--baseline {self.baseline!r}: not one of the models ({', '.join(names)})")
        if self.steps_per_forward < 1 or not self.bucket_minutes > 0:
            raise ValueError("--steps-per-forward must be >= 1 and --bucket-minutes > 0")


def evaluate_moshi(settings: MoshiEvalSettings, progress: bool = True) -> Path:
    """Run every model on every conversation; write ``results.json``, ``report.md`` and plots; returns the report."""
    from tqdm.auto import tqdm

    device, dtype = resolve_device(settings.device, settings.dtype)
    files = conversation_files(settings.data, "--data", manifest=lambda p: _encoded(p, settings))
    out = Path(settings.out)
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
                "context_steps": lm.context,
                "buckets": pooled(per_file, n_buckets),
                "conversations": per_file,
            }
            del lm
    models = results["models"]
    results["baseline"] = settings.baseline
    for name, m in models.items():
        if name != settings.baseline:
            m["paired"] = paired(m["conversations"], models[settings.baseline]["conversations"], len(m["buckets"]["text"]["loss"]))
    out.mkdir(parents=True, exist_ok=True)  # only now: a model that fails to load leaves no empty folder
    write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    return write_moshi_report(results, out)


def _encoded(manifest: Path, settings: MoshiEvalSettings) -> list[Path]:
    """The codes files of a moshi-finetune manifest, encoded into ``OUT/codes/<manifest>/`` (those that failed left out)."""
    from ...speech.encode import EncodeSettings, codes_path, encode_manifest, read_manifest

    if settings.mimi is None or settings.tokenizer is None:
        raise ValueError(f"--data {manifest}: a manifest needs --mimi and --tokenizer to be encoded")
    out = Path(settings.out) / "codes" / manifest.stem
    device, _ = resolve_device(settings.device, "float32")
    summary = encode_manifest(EncodeSettings(manifest, settings.mimi, settings.tokenizer, out, settings.mimi_config, settings.lm_kwargs, device=str(device)))
    failed = {path for path, _ in summary.failed}
    return [codes_path(out, c) for c in read_manifest(manifest) if c.path not in failed]


def _settings_dict(s: MoshiEvalSettings) -> dict:
    return {
        "models": s.models,
        "data": [str(d) for d in s.data],
        "steps_per_forward": s.steps_per_forward,
        "bucket_minutes": s.bucket_minutes,
        "lm_kwargs": s.lm_kwargs,
        "baseline": s.baseline,
    }
