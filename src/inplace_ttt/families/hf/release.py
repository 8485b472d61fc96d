"""The authors' release format (ByteDance-Seed/In-Place-TTT): read its checkpoints, write ours in it.

Their training code patches transformers 4.57's Qwen3 and Llama model files (`hf_models/hf_qwen3`,
`hf_models/hf_llama`; read for this module, not copied). A checkpoint of theirs is a plain Qwen3 or
Llama directory (model_type ``qwen3`` / ``llama``, architectures ``Qwen3ForCausalLM`` /
``LlamaForCausalLM``, their config classes keep transformers' names) whose config.json adds

    ttt_mode    true: the listed layers have TTT
    ttt_layers  layer indices; their model skips an index it does not have
    ttt_chunk   chunk size, counted from the row start (their default 8192)
    ttt_lr      eta (their default 0.3)
    ttt_proj    whether the target projection exists (default true)
    ttt_target  "hidden_states" (the MLP input) or "input_embed" (the token embeddings)

and whose weights add, per TTT layer i, ``model.layers.{i}.mlp.ttt_conv.weight`` ``[d, 1, 5]`` (an
``nn.Conv1d(d, d, 5, padding=2, groups=d, bias=False)`` run inside each chunk) and, with ttt_proj,
``model.layers.{i}.mlp.ttt_proj.weight`` ``[d, d]``, applied as ``v = conv(t) @ W``: no transpose,
unlike ``nn.Linear``. Our ``V = Conv1D(X) W_target^T`` makes ``target_weight = W^T`` and
``conv_weight = ttt_conv.weight[:, 0]``; their update ``eta v_i^T h_i`` summed onto ``W_down`` is
ours. `read_release` turns such a directory into our settings and tensors (the family's
`from_pretrained` builds the model); `export_release` writes a converted model back.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from ...config import CONFIG_KEY, TTTConfig
from ...files import write_atomic
from ...layer import InPlaceTTTMLP

FAMILIES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
TARGETS = {"hidden_states": "hidden_states", "input_embed": "token_embeddings"}  # theirs -> ours
KEYS = ("ttt_mode", "ttt_layers", "ttt_chunk", "ttt_lr", "ttt_proj", "ttt_target")
# their config classes' defaults for a key left out (the same in the training and inference classes)
DEFAULTS = {"ttt_layers": [0, 6, 12, 18, 24, 30], "ttt_chunk": 8192, "ttt_lr": 0.3, "ttt_proj": True, "ttt_target": "hidden_states"}
KERNEL = 5  # their convolution's width, fixed in their model files
_TTT_WEIGHT = re.compile(r"^model\.layers\.(\d+)\.mlp\.ttt_(conv|proj)\.weight$")


def is_release_config(data: dict) -> bool:
    """Whether a config.json (as a dict) is in the release format: it carries their TTT keys."""
    return CONFIG_KEY not in data and any(key in data for key in KEYS)


def read_release(path: str | os.PathLike, data: dict):
    """A release checkpoint's TTT settings (`TTTConfig`), its base model's transformers config
    (without their keys) and its TTT tensors under our parameter names, all checked before any
    model is built.

    Raises ValueError naming the config field or weight at fault; warns for a ``ttt_layers``
    entry past the model's last layer (their model skips it silently)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    where = f"{path / 'config.json'}"
    settings = _settings(data, where)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights (only safetensors are read, never pickles)")
    base = CONFIG_MAPPING[data["model_type"]].from_dict({k: v for k, v in data.items() if k not in KEYS})
    layers = _in_range(settings["ttt_layers"], base.num_hidden_layers, where)
    tensors = _read_tensors(path, files, layers, settings["ttt_proj"], base.hidden_size)
    config = TTTConfig(
        layers=layers,
        chunk_size=settings["ttt_chunk"],
        ttt_lr=float(settings["ttt_lr"]),
        target_source=TARGETS[settings["ttt_target"]],
        conv_kernel=KERNEL,
        target_projection=settings["ttt_proj"],
    )
    return config, base, tensors


def _settings(data: dict, where: str) -> dict:
    """Their TTT keys, defaults filled in, each checked."""
    family = data.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} carries the release's ttt_* keys, but the release format covers only {sorted(FAMILIES)}")
    arch = data.get("architectures")
    if arch is not None and arch != [FAMILIES[family]]:
        raise ValueError(f"{where}: architectures must be [{FAMILIES[family]!r}] for model_type {family!r}; got {arch!r}")
    unknown = sorted(k for k in data if k.startswith("ttt_") and k not in KEYS)
    if unknown:
        raise ValueError(
            f"{where}: {unknown} are not keys of the authors' release (it has {list(KEYS)}): a fork's extension whose "
            "math this loader does not know; remove them if they are at their no-op values"
        )
    if family == "llama" and data.get("mlp_bias"):
        raise ValueError(f"{where}: mlp_bias is true: the release's TTT layers drop the down projection's bias, ours keep it, so the loaded model would differ")
    if "ttt_mode" not in data:
        raise ValueError(f"{where}: ttt_mode is missing (their training config defaults it to true, their inference config to false): set it")
    if data["ttt_mode"] is False:
        raise ValueError(f"{where}: ttt_mode is false: their model runs this checkpoint without TTT; load it with transformers (and inplace_ttt.convert)")
    if data["ttt_mode"] is not True:
        raise ValueError(f"{where}: ttt_mode must be true or false; got {data['ttt_mode']!r}")
    s = {**DEFAULTS, **{k: data[k] for k in KEYS if k in data}}
    layers = s["ttt_layers"]
    if not isinstance(layers, list) or not layers or not all(_is_int(i) and i >= 0 for i in layers):
        raise ValueError(f"{where}: ttt_layers must be a non-empty list of layer indices >= 0; got {layers!r}")
    if not _is_int(s["ttt_chunk"]) or s["ttt_chunk"] < 1:
        raise ValueError(f"{where}: ttt_chunk must be an integer >= 1; got {s['ttt_chunk']!r}")
    lr = s["ttt_lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{where}: ttt_lr must be a finite number > 0; got {lr!r}")
    if not isinstance(s["ttt_proj"], bool):
        raise ValueError(f"{where}: ttt_proj must be true or false; got {s['ttt_proj']!r}")
    if s["ttt_target"] not in TARGETS:
        raise ValueError(f"{where}: ttt_target must be one of {list(TARGETS)}; got {s['ttt_target']!r}")
    return s


def _in_range(layers: list[int], n: int, where: str) -> list[int]:
    """The listed layers an `n`-layer model has; the others are named in a warning (their model skips them)."""
    past = sorted({i for i in layers if i >= n})
    kept = sorted({i for i in layers if i < n})
    if not kept:
        raise ValueError(f"{where}: ttt_layers {layers} names no layer of this {n}-layer model (0..{n - 1})")
    if past:
        warnings.warn(
            f"{where}: ttt_layers lists {past}, past this {n}-layer model's last layer {n - 1}; their model skips it, and so does this one", stacklevel=2
        )
    return kept


def _read_tensors(path: Path, files: list[Path], layers: list[int], proj: bool, d: int) -> dict[str, Tensor]:
    """The TTT tensors of the weight files, checked against the config, under our names."""
    from safetensors import safe_open

    found: dict[tuple[int, str], tuple[Path, str]] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                m = _TTT_WEIGHT.match(key)
                if m:
                    found[int(m.group(1)), m.group(2)] = (file, key)
                elif ".ttt" in key:
                    raise ValueError(f"{file}: {key} is not a TTT weight of the release format (model.layers.{{i}}.mlp.ttt_conv.weight / ttt_proj.weight)")
    if not found:
        raise ValueError(
            f"{path}: config.json has ttt_mode true with ttt_layers {layers}, but no weight file holds a TTT tensor "
            f"(model.layers.{layers[0]}.mlp.ttt_conv.weight ...): its TTT weights are missing"
        )
    wanted = {(i, "conv"): [d, 1, KERNEL] for i in layers}
    if proj:
        wanted.update({(i, "proj"): [d, d] for i in layers})
    extra = sorted(found.keys() - wanted.keys())
    if extra:
        what = "ttt_proj is false" if any(kind == "proj" for _, kind in extra) and not proj else f"ttt_layers is {layers}"
        raise ValueError(f"{path}: the weights hold {[found[k][1] for k in extra]}, but config.json's {what}")
    missing = sorted(wanted.keys() - found.keys())
    if missing:
        raise ValueError(
            f"{path}: config.json (ttt_layers {layers}, ttt_proj {str(proj).lower()}) needs {[_name(*k) for k in missing]}, which no weight file holds"
        )
    tensors = {}
    for (i, kind), shape in sorted(wanted.items()):
        file, key = found[i, kind]
        with safe_open(file, framework="pt") as f:
            got = list(f.get_slice(key).get_shape())
            if got != shape:
                raise ValueError(f"{file}: {key} has shape {got}; hidden_size {d} and their kernel {KERNEL} make it {shape}")
            t = f.get_tensor(key)
        if kind == "conv":
            tensors[f"model.layers.{i}.mlp.ttt.conv_weight"] = t[:, 0].contiguous()
        else:  # v = conv(t) @ W  ==  F.linear(conv(t), W^T)
            tensors[f"model.layers.{i}.mlp.ttt.target_weight"] = t.T.contiguous()
    return tensors


def _name(i: int, kind: str) -> str:
    return f"model.layers.{i}.mlp.ttt_{kind}.weight"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# export ---------------------------------------------------------------------------------------


def export_release(model: nn.Module, save_directory: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write a converted Qwen3 or Llama model in the authors' release format: their config keys and
    weight names, for their inference model and RULER pipeline (transformers 4.57: the RoPE
    settings are written as ``rope_theta`` / ``rope_scaling`` too). `tokenizer`, if given, is saved
    beside it. Inference clipping (``clip_tau``) is not part of their format and is not written.

    Raises ValueError, before writing anything, for a model their files cannot express (another
    family, a kernel other than 5, a Llama with ``mlp_bias``) or a `save_directory` that holds
    files; the directory appears complete or not at all."""
    layers = _ttt_mlps(model)
    family = model.config.model_type
    if family not in FAMILIES:
        raise ValueError(f"export_release: model_type {family!r}: the release's model files cover only {sorted(FAMILIES)}")
    if family == "llama" and getattr(model.config, "mlp_bias", False):
        raise ValueError(
            "export_release: mlp_bias is true: the release's TTT layers drop the down projection's bias, so their model would compute something else"
        )
    first = next(iter(layers.values()))
    if first.ttt.conv_weight is not None and first.ttt.kernel != KERNEL:
        raise ValueError(f"export_release: conv_kernel is {first.ttt.kernel}; the release's convolution has width {KERNEL}")
    dest = Path(save_directory)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"export_release: {dest} exists and is not an empty directory; export into a new one")
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(f"{p}.ttt.") for p in layers)}
    for prefix, layer in layers.items():
        state[f"{prefix}.ttt_conv.weight"] = _release_conv(layer)
        if layer.ttt.target_weight is not None:
            state[f"{prefix}.ttt_proj.weight"] = layer.ttt.target_weight.detach().T.contiguous()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        type(model).save_pretrained(model, tmp, state_dict=state)  # the class's own: no In-Place TTT marking
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        data = _release_config(json.loads(config_file.read_text()), first, sorted(int(p.split(".")[-2]) for p in layers))
        write_atomic(config_file, json.dumps(data, indent=2, sort_keys=True) + "\n")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _ttt_mlps(model: nn.Module) -> dict[str, InPlaceTTTMLP]:
    """`{"model.layers.{i}.mlp": layer}` for the TTT layers of a converted model, by their names in it."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, InPlaceTTTMLP)}
    if not layers:
        raise ValueError(f"export_release: {type(model).__name__} has no In-Place TTT layers: convert it first (inplace_ttt.convert)")
    odd = [name for name in layers if not re.fullmatch(r"model\.layers\.\d+\.mlp", name)]
    if odd:
        raise ValueError(f"export_release: TTT layers at {odd}; the release format names them model.layers.{{i}}.mlp")
    return layers


def _release_conv(layer: InPlaceTTTMLP) -> Tensor:
    """Their ``[d, 1, 5]`` convolution weight; without a convolution (``target_conv=False``) the
    identity, a single centre tap of 1, which computes exactly the same ``V``."""
    conv = layer.ttt.conv_weight
    if conv is not None:
        return conv.detach()[:, None].contiguous()
    weight = layer.ttt.target_weight
    identity = torch.zeros(weight.shape[1], 1, KERNEL, dtype=weight.dtype, device=weight.device)
    identity[:, 0, KERNEL // 2] = 1
    return identity


def _release_config(data: dict, layer: InPlaceTTTMLP, indices: list[int]) -> dict:
    """Our saved config.json turned into theirs."""
    data.pop(CONFIG_KEY, None)
    family = data["model_type"]
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:  # transformers 4.57 reads these two, not rope_parameters
        data["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        data["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    if "dtype" in data:
        data["torch_dtype"] = data["dtype"]
    target = {ours: theirs for theirs, ours in TARGETS.items()}[layer.target_source]
    return {
        **data,
        "architectures": [FAMILIES[family]],
        "ttt_mode": True,
        "ttt_layers": indices,
        "ttt_chunk": layer.chunk_size,
        "ttt_lr": layer.ttt_lr,
        "ttt_proj": layer.ttt.target_weight is not None,
        "ttt_target": target,
    }
