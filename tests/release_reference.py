"""The authors' In-Place TTT math, transcribed in plain torch from reading their release.

Independent of `inplace_ttt` (nothing from `src/` is imported): the reference that
`tests/families/hf/test_release.py` holds our loaded models to, and that
`benchmarks/release_differences.py` measures the release's behaviour with.

Read from ByteDance-Seed/In-Place-TTT (stored copies; their forked transformers 4.57 files):

- `hf_models/hf_qwen3/modeling_qwen3.py` and `hf_models/hf_llama/modeling_llama.py`, the training
  model: `Qwen3MLP.forward(x, t)` / `LlamaMLP.forward(x, t)`. Rows are cut into chunks of
  `ttt_chunk` tokens from the row start, the last one zero-padded; `t` (the MLP input for
  ``ttt_target: hidden_states``, the token embeddings for ``input_embed``) goes through
  `nn.Conv1d(d, d, 5, padding=2, groups=d, bias=False)` inside each chunk, then
  ``v = conv(t) @ ttt_proj.weight`` (no transpose) when ``ttt_proj``; the chunk updates
  ``eta v_i^T h_i`` of all chunks but the last are stacked after ``W_down`` and cumsum'ed, and
  chunk i reads the i-th partial sum. No document boundaries, no padding mask.
- `inference_model/hf_qwen3/modeling_qwen3.py` and `inference_model/hf_llama3/modeling_llama.py`,
  the generation model: once the tokens seen reach a chunk, its MLP loops over the chunks of
  **row 0 only** (`zip(range(chunk_num), y[0], t_conv[0], h_padded[0])`, `y = zeros_like(...)`):
  the other rows' MLP outputs stay zero and the single `[d, h]` fast weight learns from row 0.
  Its `generate` asserts a batch of one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL = 5


def chunked(x: Tensor, chunk: int) -> Tensor:
    """`[b, T, f]` -> `[b, n, chunk, f]`, zero-padded at the end to whole chunks (their `padding`)."""
    b, T, f = x.shape
    n = -(-T // chunk)
    return F.pad(x, (0, 0, 0, n * chunk - T)).reshape(b, n, chunk, f)


def conv_in_chunks(t: Tensor, conv_weight: Tensor) -> Tensor:
    """Their depthwise `nn.Conv1d(d, d, 5, padding=2, groups=d)` on each chunk: `[b, n, c, d]`, weight `[d, 1, 5]`."""
    b, n, c, d = t.shape
    y = F.conv1d(t.reshape(b * n, c, d).transpose(1, 2), conv_weight, padding=KERNEL // 2, groups=d)
    return y.transpose(1, 2).reshape(b, n, c, d)


def training_mlp(mlp, x: Tensor, t: Tensor, conv_weight: Tensor, proj_weight: Tensor | None, chunk: int, lr: float) -> Tensor:
    """Their training-side TTT MLP: `x`, `t` `[b, T, d]` -> `[b, T, d]` (`mlp` supplies gate, up, down, act)."""
    h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    b, T, _ = x.shape
    hp = chunked(h, chunk)
    v = conv_in_chunks(chunked(t, chunk), conv_weight)
    if proj_weight is not None:
        v = v @ proj_weight  # v = conv(t) @ W: their einsum "b t c d, d e -> b t c e"
    w_down = mlp.down_proj.weight
    deltas = torch.einsum("btch,btcd->btdh", hp[:, :-1], v[:, :-1]) * lr
    weights = torch.cat([w_down.expand(b, 1, *w_down.shape), deltas], 1).cumsum(1)  # [W_down, eta dW_0, ...]
    out = torch.einsum("btdh,btch->btcd", weights, hp)
    return out.reshape(b, -1, out.shape[-1])[:, :T]


def inference_mlp(mlp, x: Tensor, t: Tensor, conv_weight: Tensor, proj_weight: Tensor | None, chunk: int, lr: float) -> Tensor:
    """Their inference-side TTT MLP on a prompt of `T >= chunk` tokens (their prefill): the chunk
    loop over row 0; the other rows come out zero."""
    h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    b, T, _ = x.shape
    hp = chunked(h, chunk)
    v = conv_in_chunks(chunked(t, chunk), conv_weight)
    y = torch.zeros(*hp.shape[:3], x.shape[-1], dtype=x.dtype)
    w = mlp.down_proj.weight
    for i in range(hp.shape[1]):
        y[0, i] = hp[0, i] @ w.T
        if T % chunk == 0 or i != hp.shape[1] - 1:
            vi = v[0, i] @ proj_weight if proj_weight is not None else v[0, i]
            w = w + lr * vi.T @ hp[0, i]
    return y.reshape(b, -1, y.shape[-1])[:, :T]


class ReleaseModel:
    """A plain transformers Qwen3 / Llama model whose TTT layers' MLPs compute the release's math.

    `weights`: ``{layer index: (ttt_conv.weight [d, 1, 5], ttt_proj.weight [d, d] or None)}``;
    `mlp`: `training_mlp` or `inference_mlp`. Call it like the model (it patches the MLPs' forward).
    """

    def __init__(self, model, weights: dict, chunk: int, lr: float, target: str, mlp=training_mlp):
        self.model = model
        self._embeds = None
        layers = model.model.layers
        for i, (conv, proj) in weights.items():
            layers[i].mlp.forward = self._forward(layers[i].mlp, conv, proj, chunk, lr, target, mlp)
        model.model.embed_tokens.register_forward_hook(self._keep_embeds)

    def _keep_embeds(self, module, args, output):
        self._embeds = output  # their `inputs_embeds`, the target for ttt_target: input_embed

    def _forward(self, mlp, conv, proj, chunk, lr, target, fn):
        def forward(x):
            t = x if target == "hidden_states" else self._embeds
            return fn(mlp, x, t, conv, proj, chunk, lr)

        return forward

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)
