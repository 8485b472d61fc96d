"""`ittt serve`: transformers' own OpenAI-compatible server (`transformers serve`) for a converted
folder. Nothing of the serving is ours; this module changes only how that server loads a model.

transformers' server builds a model from the class its config's ``architectures`` names
(``getattr(transformers, "LlamaForCausalLM")``), not through the Auto classes. For a converted folder
that is the base architecture, which loads without the TTT layers (transformers only warns about the
unexpected weights). Here In-Place TTT folders load through ``AutoModelForCausalLM``, which this
package registers (`families.hf.auto`), and every other folder as transformers loads it, so one
server runs a converted model and its base alike.

Requests run one at a time: transformers' sequential generation manager runs one `generate` per
request on one inference thread, each with a cache of its own, so fast weights never cross requests.
Its continuous batching (``--continuous-batching``) is refused: requests then share a paged cache
that holds no fast weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

REFUSED_OPTIONS = {"--continuous-batching": "continuous batching packs requests into a paged KV cache that holds no TTT fast weights"}


def serve(model: str | os.PathLike, *, clip_tau: float | None = ..., options: Sequence[str] = ()) -> None:
    """Run ``transformers serve MODEL OPTIONS...`` (until it is stopped), loading an In-Place TTT folder
    as its converted model, with inference clipping `clip_tau` when given (its saved value otherwise)."""
    from .families.hf.loading import is_ttt_checkpoint

    if not os.path.isdir(model):
        raise ValueError(f"{model}: no such model folder (the folder comes first: ittt serve FOLDER [options])")
    if is_ttt_checkpoint(model):
        for option in options:
            refused = REFUSED_OPTIONS.get(option.split("=")[0])
            if refused:
                raise ValueError(f"{option} is not supported for In-Place TTT models: {refused}")
    elif clip_tau is not ...:
        raise ValueError(f"--clip-tau applies to an In-Place TTT folder; {model} is not one")
    from transformers.cli.serving import model_manager
    from transformers.cli.transformers import app

    original = model_manager.ModelManager
    # `transformers serve` builds its ModelManager from this module attribute when it starts
    model_manager.ModelManager = _loading_ttt_folders(original, clip_tau)
    try:
        app(["serve", os.fspath(model), *options], prog_name="ittt serve")
    finally:
        model_manager.ModelManager = original


def _loading_ttt_folders(manager: type, clip_tau: float | None) -> type:
    """`manager` (transformers' ModelManager) loading In-Place TTT folders through ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM
    from transformers.cli.serving.utils import split_revision

    from .families import set_clip_tau
    from .families.hf import register
    from .families.hf.loading import is_ttt_checkpoint

    register()

    class InPlaceTTTModelManager(manager):
        def _load_model(self, model_id_and_revision, tqdm_class=None, progress_callback=None, gguf_file=None):
            path, _ = split_revision(model_id_and_revision)
            if gguf_file is not None or not is_ttt_checkpoint(path):
                return super()._load_model(model_id_and_revision, tqdm_class=tqdm_class, progress_callback=progress_callback, gguf_file=gguf_file)
            if self.quantization is not None:
                raise ValueError(f"--quantization {self.quantization}: quantized In-Place TTT models are not supported")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, device_map=self.device, attn_implementation=self.attn_implementation)
            if clip_tau is not ...:
                set_clip_tau(model, clip_tau)
            return model

    return InPlaceTTTModelManager
