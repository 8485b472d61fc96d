"""The models `ittt moshi-eval` compares, one ``--model NAME=PATH[,ttt=FILE][,clip_tau=X][,yarn=F]`` each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...speech.loading import load_inference_lm, meta_lm, safetensors_file

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
        """The model for inference; YaRN stretches the positions past the attention context of the
        LMModel `lm_kwargs` describe (None: Moshi 7B)."""
        try:
            rope_scaling = None
            if self.yarn is not None:
                context = meta_lm(lm_kwargs).context
                if context is None:
                    raise ValueError("yarn needs an LMModel with an attention context (its 'context' setting)")
                rope_scaling = {"rope_type": "yarn", "factor": self.yarn, "original_max_position_embeddings": context}
            return load_inference_lm(
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
