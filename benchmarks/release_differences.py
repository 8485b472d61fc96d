"""Where a model loaded from the authors' release behaves differently here, on purpose, measured.

One tiny Qwen3 with trained-looking TTT weights is exported in the release format; the release's
math (`tests/release_reference.py`, a transcription of their training and inference MLPs) and our
loaded model then read the same tokens:

  packing    two documents in one row (position_ids restart at 0) against the second one alone
  padding    a left-padded row (attention_mask 0) against the same tokens unpadded
  batch      a batch of 2 prompts of >= 1 chunk against each prompt alone: their inference model
             (what generation runs) reads row 0 only
  bf16       one TTT MLP in bfloat16 over many chunks against the same weights in float64: their
             partial sums W_down + sum of updates are bf16, our fast-weight sum is float32

Reported: max |logit difference| over the tokens compared (float64), with the TTT layers' effect
on the logits beside it for scale; for bf16, the share of the exact fast-weight term that reaches
the MLP output (a regression coefficient over all outputs: 1 = all of it), for several sizes of
the fast weight against W_down.

    python benchmarks/release_differences.py
    python benchmarks/release_differences.py --bf16-tokens 16384 --bf16-chunk 128 --ratios 1e-4 1e-3
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen3Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
import inplace_ttt  # noqa: E402
from inplace_ttt.families.hf import quiet_transformers  # noqa: E402
from tests.release_reference import ReleaseModel, chunked, conv_in_chunks, inference_mlp, training_mlp  # noqa: E402

VOCAB = 256


def build(chunk: int, seed: int):
    """A converted tiny Qwen3 with non-zero TTT weights, float64, and its release export."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").double().eval()
    model = inplace_ttt.convert(copy.deepcopy(base), inplace_ttt.TTTConfig(layers=[0, 2], chunk_size=chunk, ttt_lr=0.5))
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(model):
            layer.ttt.conv_weight.normal_(0, 0.3)
            layer.ttt.target_weight.normal_(0, 0.3)
    out = Path(tempfile.mkdtemp()) / "release"
    inplace_ttt.export_release(model, out)
    return base, inplace_ttt.from_pretrained(out, dtype=torch.float64).eval(), out


def theirs(path: Path, mlp=training_mlp) -> ReleaseModel:
    data = json.loads((path / "config.json").read_text())
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64, attn_implementation="sdpa").eval()
    w = load_file(path / "model.safetensors")
    weights = {i: (w[f"model.layers.{i}.mlp.ttt_conv.weight"], w[f"model.layers.{i}.mlp.ttt_proj.weight"]) for i in data["ttt_layers"]}
    return ReleaseModel(model, weights, data["ttt_chunk"], data["ttt_lr"], data["ttt_target"], mlp=mlp)


@torch.no_grad()
def logits(model, ids, **kw):
    return model(input_ids=ids, use_cache=False, **kw).logits


def document_cases(base, ours, path, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    n = 3 * chunk + 5
    a, b = torch.randint(3, VOCAB, (1, n), generator=g), torch.randint(3, VOCAB, (1, n), generator=g)
    rows = []
    # packing: [a | b] with position_ids restarting at b, compared on b
    ids, pos = torch.cat([a, b], 1), torch.cat([torch.arange(n), torch.arange(n)])[None]
    their = theirs(path)
    scale = (logits(their, b) - logits(base, b)).abs().max().item()
    rows.append(
        (
            "packing",
            (logits(ours, ids, position_ids=pos)[:, n:] - logits(ours, b)).abs().max().item(),
            (logits(their, ids, position_ids=pos)[:, n:] - logits(their, b)).abs().max().item(),
            scale,
        )
    )
    # padding: 7 pad tokens before b
    pad = 7
    ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them: RoPE angles equal to the unpadded row's
    rows.append(
        (
            "padding",
            (logits(ours, ids, attention_mask=mask, position_ids=pos)[:, pad:] - logits(ours, b)).abs().max().item(),
            (logits(their, ids, attention_mask=mask, position_ids=pos)[:, pad:] - logits(their, b)).abs().max().item(),
            scale,
        )
    )
    # batch: rows [a, b]; their generation model on the prompt, row 1 against b alone (row 0 of its own batch)
    ids = torch.cat([a, b])
    gen = theirs(path, inference_mlp)
    rows.append(("batch", (logits(ours, ids)[1] - logits(ours, b)[0]).abs().max().item(), (logits(gen, ids)[1] - logits(gen, b)[0]).abs().max().item(), scale))
    check = (logits(gen, b) - logits(their, b)).abs().max().item()  # their two models agree on one row
    return rows, check


def bf16_case(tokens: int, chunk: int, ratio: float, seed: int) -> tuple[float, float]:
    """One TTT MLP (d 256, h 1024) in bfloat16, eta set so that ``||eta S|| / ||W_down|| = ratio``
    at the last chunk: the share of the exact (float64) fast-weight term that reaches the output,
    ours and theirs (1 = all of it: rounding noise averages out over the tokens, a lost update
    does not)."""
    torch.manual_seed(seed)
    d, h = 256, 1024
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=d, intermediate_size=h, num_hidden_layers=1, num_attention_heads=4, head_dim=64)
    mlp = AutoModelForCausalLM.from_config(config).to(torch.bfloat16).model.layers[0].mlp
    conv = (0.3 * torch.randn(d, 1, 5)).to(torch.bfloat16)  # their layout
    proj = (torch.eye(d) + 0.3 * torch.randn(d, d)).to(torch.bfloat16)
    x = torch.randn(1, tokens, d).to(torch.bfloat16)
    with torch.no_grad():
        mlp64, x64 = copy.deepcopy(mlp).double(), x.double()
        z = chunked(mlp64.act_fn(mlp64.gate_proj(x64)) * mlp64.up_proj(x64), chunk)[0, :-1]
        v = (conv_in_chunks(chunked(x64, chunk), conv.double()) @ proj.double())[0, :-1]
        lr = ratio * mlp64.down_proj.weight.norm().item() / torch.einsum("tch,tcd->dh", z, v).norm().item()
        exact = training_mlp(mlp64, x64, x64, conv.double(), proj.double(), chunk, lr) - mlp64(x64)
        ours = inplace_ttt.InPlaceTTTMLP(copy.deepcopy(mlp), inplace_ttt.TTTConfig(layers=[0], chunk_size=chunk, ttt_lr=lr))
        ours.ttt.conv_weight.copy_(conv[:, 0])
        ours.ttt.target_weight.copy_(proj.T)
        plain = mlp(x).double()  # the same MLP in bf16 without TTT
        share = lambda y: ((y.double() - plain) * exact).sum().item() / (exact * exact).sum().item()  # noqa: E731
        return share(ours(x)), share(training_mlp(mlp, x, x, conv, proj, chunk, lr))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--bf16-tokens", type=int, default=8192)
    parser.add_argument("--bf16-chunk", type=int, default=64)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    base, ours, path = build(args.chunk, args.seed)
    rows, check = document_cases(base, ours, path, args.chunk, args.seed)
    print(f"tiny Qwen3 (d 64, 4 layers, TTT on 0 and 2, chunk {args.chunk}), float64; max |logit difference|")
    print("| case | ours | release | TTT's effect on the logits |")
    print("|---|---|---|---|")
    for name, a, b, scale in rows:
        print(f"| {name} | {a:.2e} | {b:.2e} | {scale:.2e} |")
    print(f"(their inference and training math on one row: max |difference| {check:.2e})")
    n = args.bf16_tokens // args.bf16_chunk
    print(
        f"\nbf16, one TTT MLP (d 256, h 1024), {args.bf16_tokens} tokens = {n} chunks of {args.bf16_chunk}: "
        "share of the exact fast-weight term in the output (1 = all)"
    )
    print("| ||eta S|| / ||W_down|| | ours (float32 sum) | release (bf16 W_down + sum) |")
    print("|---|---|---|")
    for ratio in args.ratios:
        a, b = bf16_case(args.bf16_tokens, args.bf16_chunk, ratio, args.seed)
        print(f"| {ratio:g} | {a:.3f} | {b:.3f} |")


if __name__ == "__main__":
    main()
