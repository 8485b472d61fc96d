"""`TTTConfig`: which layers get In-Place TTT and how their fast weights learn.

Validated when built, so a bad value fails at the edge with the field name and the allowed
values, not as a shape error deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

TARGETS = ("hidden_states", "token_embeddings")
TARGET_INITS = ("identity", "diagonal")
CLIP_MODES = ("absolute", "relative")
TTT_LR_MAX = 1000.0  # the fast-weight learning rate's bound: the paper's 3 times 300
CHUNK_SIZE_MAX = 1 << 20  # tokens: a chunk longer than a million tokens is longer than any row, so it would never update
CONV_KERNEL_MAX = 1023  # the target's convolution weighs hidden size x kernel; the release's is 5, and a wider one only costs memory
CONFIG_KEY = "inplace_ttt"  # where a converted transformers model's config keeps these settings


def _meta(text: str, choices: tuple = ()) -> dict[str, Any]:
    """A field's help, and its allowed values where only some are (what `ittt train --help` lists)."""
    return {"help": text, **({"choices": choices} if choices else {})}


_RULE = re.compile(r"^\s*every\s+(\d+)(?:st|nd|rd|th)?(?:\s+layers?)?(?:\s+from\s+(\d+))?\s*$")


@dataclass
class TTTConfig:
    """Settings of the In-Place TTT layers of one model.

    layers: explicit layer indices (``[0, 6, 12]``), or a rule: ``"all"``,
        ``"every 6"`` / ``"every 6th layer from 0"`` (the released recipe), ``"every 4 from 2"``.
    chunk_size: tokens per chunk ``C``; a chunk's update reaches the chunks after it.
    ttt_lr: the fast-weight learning rate ``eta`` (released default 3.0), at most `TTT_LR_MAX`.
    target_source: where the target ``V = Conv1D(X) W_target`` reads ``X`` from: the MLP input
        (``"hidden_states"``, what the released code recommends for continual training) or the
        model's token embeddings (``"token_embeddings"``, the paper's text).
    conv_kernel: width of the depthwise convolution of the target, odd, centred.
    target_init: how ``W_target`` starts (the convolution always starts at zero, so ``V = 0``
        and the warm start is exact): ``"diagonal"`` (the default, the authors' release: a random
        diagonal with standard deviation `target_init_std`) or ``"identity"``. The start sets how
        strongly the convolution is pulled at the first steps, and how strong a given convolution's
        targets are: both scale with ``W_target``. Measured in continual training of the embedded
        sliding-window model (hidden-state targets, TTT parameters at AdamW lr 1e-4): the identity
        start blew up (0.3-0.6 nats behind the baseline), the diagonal one stayed within 0.04.
    target_init_std: the standard deviation of the ``"diagonal"`` start.
    target_conv: ``False`` is the paper's "no convolution" ablation: ``V = X W_target^T``, with
        ``W_target`` starting at zero (the warm start stays exact; `target_init` does not apply).
    target_projection: ``False`` is the release's ``ttt_proj: false``: ``V = Conv1D(X)``, no
        ``W_target``. At most one of `target_conv` and `target_projection` may be off.
    clip_tau: if set, each chunk update is scaled down to Frobenius norm ``clip_tau``.
        An inference option (the paper used 1e-5 for long-context evaluation); clipping in
        training starves the new parameters of gradient. Measured (docs/clipping.md): at 1e-5
        absolute, clipping keeps 6e-5 of each update of the trained demo model and 9e-6 of a
        135M-shaped one, which switches TTT off; the layers warn at their first clipped forward,
        and the doctor, `ittt eval` and the training telemetry report the share kept
        (`families.clip.clip_report`).
    clip_mode: how `clip_tau` is read. ``"absolute"`` (the default, the paper's text): a bound on
        ``||dW_i||_F``, the chunk update before ``eta``, whose scale depends on the model's width,
        its activations and the chunk size. ``"relative"``: a bound on ``eta ||dW_i||_F / ||W0||_F``,
        the share of the down projection's norm one chunk may move it by, the same at every size.
    """

    ALIASES: ClassVar[dict[str, str]] = {"target": "target_source"}  # renamed keys, read for one release

    layers: Sequence[int] | str = field(default="every 6", metadata=_meta("layer indices ([0, 6, 12]) or a rule: 'all', 'every 6', 'every 4 from 2'"))
    chunk_size: int = field(default=1024, metadata=_meta("tokens per chunk; a chunk's update reaches the chunks after it"))
    ttt_lr: float = field(default=3.0, metadata=_meta(f"the fast weights' learning rate eta, in (0, {TTT_LR_MAX:g}] (the paper's: 3)"))
    target_source: str = field(default="hidden_states", metadata=_meta("where the target reads X from: the MLP input or the token embeddings", TARGETS))
    conv_kernel: int = field(default=5, metadata=_meta("width of the target's depthwise convolution, odd"))
    clip_tau: float | None = field(default=None, metadata=_meta("clip each chunk update to this Frobenius norm; an inference option (null: off)"))
    clip_mode: str = field(
        default="absolute",
        metadata=_meta("how clip_tau is read: a bound on ||dW|| (absolute) or on eta ||dW|| / ||W0|| per chunk (relative)", CLIP_MODES),
    )
    # measured: TRAINING.md runs Tid / R2b, docs/demo.md "Choosing the start"
    target_init: str = field(default="diagonal", metadata=_meta("how W_target starts (the convolution starts at zero)", TARGET_INITS))
    target_init_std: float = field(default=0.02, metadata=_meta("the standard deviation of the diagonal start"))
    target_conv: bool = field(default=True, metadata=_meta("false: the paper's no-convolution ablation"))
    target_projection: bool = field(default=True, metadata=_meta("false: the release's ttt_proj: false, no W_target"))
    target: InitVar[str | None] = None  # the old name of `target_source`, accepted for one release

    def __post_init__(self, target: str | None = None) -> None:
        if target is not None:
            warnings.warn("TTTConfig(target=...) is deprecated; use target_source=...", FutureWarning, stacklevel=3)
            self.target_source = target
        if isinstance(self.layers, str):
            _parse_rule(self.layers)
        elif not isinstance(self.layers, Sequence):
            raise ValueError(f"TTTConfig.layers must be a list of layer indices or a rule like 'every 6' / 'every 6 from 0' / 'all'; got {self.layers!r}")
        else:
            layers = list(self.layers)
            if not layers or not all(_is_int(i) and i >= 0 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(
                    f"TTTConfig.layers must be distinct non-negative layer indices or a rule like 'every 6' / 'every 6 from 0' / 'all'; got {self.layers!r}"
                )
            self.layers = tuple(sorted(int(i) for i in layers))
        if not _is_int(self.chunk_size) or not 1 <= self.chunk_size <= CHUNK_SIZE_MAX:
            raise ValueError(
                f"TTTConfig.chunk_size must be an integer in [1, {CHUNK_SIZE_MAX}] (a longer chunk is longer than any row and never updates); got {self.chunk_size!r}"
            )
        if not _is_positive(self.ttt_lr) or self.ttt_lr > TTT_LR_MAX:
            raise ValueError(
                f"TTTConfig.ttt_lr must be a number in (0, {TTT_LR_MAX:g}] (the paper's is 3; far larger ones overflow "
                f"the fast weights to inf and NaN); got {self.ttt_lr!r}"
            )
        self.ttt_lr = float(self.ttt_lr)
        if self.target_source not in TARGETS:
            raise ValueError(f"TTTConfig.target_source must be one of {TARGETS}; got {self.target_source!r}")
        if not _is_int(self.conv_kernel) or not 1 <= self.conv_kernel <= CONV_KERNEL_MAX or self.conv_kernel % 2 == 0:
            raise ValueError(
                f"TTTConfig.conv_kernel must be an odd integer in [1, {CONV_KERNEL_MAX}] (centred; its weights are hidden size x kernel); got {self.conv_kernel!r}"
            )
        if self.target_init not in TARGET_INITS:
            raise ValueError(f"TTTConfig.target_init must be one of {TARGET_INITS}; got {self.target_init!r}")
        if not _is_positive(self.target_init_std):
            raise ValueError(f"TTTConfig.target_init_std must be a finite number > 0; got {self.target_init_std!r}")
        self.target_init_std = float(self.target_init_std)
        for name in ("target_conv", "target_projection"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TTTConfig.{name} must be true or false; got {getattr(self, name)!r}")
        if not (self.target_conv or self.target_projection):
            raise ValueError(
                "TTTConfig: target_conv and target_projection cannot both be false: V would be the raw input, with nothing to learn and no exact warm start"
            )
        if self.clip_tau is not None:
            if not _is_positive(self.clip_tau):
                raise ValueError(f"TTTConfig.clip_tau must be None or a finite number > 0; got {self.clip_tau!r}")
            self.clip_tau = float(self.clip_tau)
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"TTTConfig.clip_mode must be one of {CLIP_MODES}; got {self.clip_mode!r}")

    def layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """The TTT layer indices of a model with `num_layers` layers; out-of-range indices raise."""
        if isinstance(self.layers, str):
            step, start = _parse_rule(self.layers)
            if start >= num_layers:
                raise ValueError(f"TTTConfig.layers={self.layers!r} starts at layer {start}, but the model has {num_layers} layers")
            return tuple(range(start, num_layers, step))
        bad = [i for i in self.layers if i >= num_layers]
        if bad:
            raise ValueError(f"TTTConfig.layers has indices {bad} outside the model's {num_layers} layers (0..{num_layers - 1})")
        return tuple(self.layers)

    def replace(self, **changes: Any) -> TTTConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def write_into(self, saved: dict[str, Any]) -> dict[str, Any]:
        """`saved` (a converted model's record of its settings, which holds its resolved layer
        indices and its training record) brought up to date with these settings; returns it."""
        saved.update({k: v for k, v in self.to_dict().items() if k != "layers"})
        return saved

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(d["layers"], str):
            d["layers"] = list(d["layers"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTTConfig:
        """From saved settings (`to_dict`); those of earlier releases name `target_source` `target`."""
        data = {cls.ALIASES.get(k, k): v for k, v in data.items()}
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown TTTConfig fields {unknown}; valid fields: {sorted(valid)}")
        return cls(**data)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_positive(x: Any) -> bool:
    """A finite number > 0 (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _parse_rule(rule: str) -> tuple[int, int]:
    """`(step, start)` of a layer rule string."""
    if rule.strip().lower() == "all":
        return 1, 0
    m = _RULE.match(rule.lower())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"TTTConfig.layers rule {rule!r} not understood; use 'all', 'every N' or 'every N from K' (N >= 1), or a list of layer indices")
    return int(m.group(1)), int(m.group(2) or 0)
