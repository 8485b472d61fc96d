"""What inference clipping at the paper's tau = 1e-5 does to the fast-weight updates, measured.

Each chunk update ``dW_i = V_i^T Z_i`` is scaled by the clip factor ``c_i = min(1, tau / ||dW_i||_F)``
(1: untouched). This trains two models with In-Place TTT, then runs each over rows of the embedded
held-out books with clipping off, at tau = 1e-5 read three ways, and prints the distribution of the
clip factor and of the update norms per model:

  absolute   ||dW_i|| <= tau                       (the paper's text; `clip_mode: absolute`)
  relative   eta ||dW_i|| / ||W0|| <= tau          (a share of the down projection; `clip_mode: relative`)
  per token  ||dW_i|| <= tau * chunk_size          (tau per token of the chunk; computed from the norms)

Models:
  demo   the demo's TTT run: the embedded base model, 150 steps (`benchmarks/ttt_clipping.py`'s
         "TTT clipped apart" run, which is `ittt demo`'s), layer 3, chunk 64, eta 3;
  135m   a 135M-shaped Llama (SmolLM-135M: hidden 576, MLP 1536, 30 layers, 9 heads, 3 kv heads),
         random init (seed 0), trained with the issue's recipe: TTT every 6th layer, eta 3, chunk
         256, 8 steps of one 1024-token row of the embedded corpus, AdamW 3e-4, TTT parameters 1e-4;
  gguf   the same recipe on a real pretrained checkpoint read from a GGUF file (`--gguf FILE`,
         e.g. SmolLM2-135M; its own tokenizer), as the issue's researcher ran it.

    python benchmarks/update_clipping.py                      # demo and 135m, 4 held-out rows of 1024 tokens
    python benchmarks/update_clipping.py --models demo --rows 8
    python benchmarks/update_clipping.py --models gguf --gguf /models/SmolLM2-135M-Instruct.Q4_1.gguf

Trained runs stay under --out and are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ttt_clipping import config_of  # noqa: E402  the demo's TTT run, as that benchmark trains it

from inplace_ttt.assets import base_model_dir, corpus_files  # noqa: E402
from inplace_ttt.config import TTTConfig  # noqa: E402
from inplace_ttt.documents import read_documents  # noqa: E402
from inplace_ttt.families import ttt_layers  # noqa: E402
from inplace_ttt.families.clip import clip_report  # noqa: E402
from inplace_ttt.train.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from inplace_ttt.train.run import train  # noqa: E402

PAPER_TAU = 1e-5
SHAPE_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)


def trained_demo(out: Path) -> Path:
    final = out / "final"
    if not (final / "config.json").is_file():
        train(config_of("TTT clipped apart", 0, 150, out))
    return final


def trained_135m(out: Path, gguf: Path | None = None) -> Path:
    """The 135M-shaped model (random init, the demo's tokenizer and its 4096-word vocabulary), or
    the checkpoint of `gguf`, trained with the issue's recipe."""
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    base_dir = out / "base" if gguf is None else gguf.parent
    if gguf is None and not (base_dir / "config.json").is_file():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(base_model_dir())
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, rope_theta=100000.0, **SHAPE_135M)
        AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    config = RunConfig(
        model=str(base_dir),
        gguf_file=None if gguf is None else gguf.name,
        ttt=TTTConfig(layers="every 6", chunk_size=256, ttt_lr=3.0),
        data=DataConfig(train=corpus_files("train"), row_length=1024),
        train=TrainConfig(
            output_dir=str(out / "run"),
            learning_rate=3e-4,
            ttt_params_learning_rate=1e-4,
            max_steps=8,
            per_device_train_batch_size=1,
            logging_steps=1,
            save_steps=1000,
            seed=0,
            report_to=[],
            doctor=False,
        ),
    )
    return train(config)


def heldout_rows(tokenizer, rows: int, length: int) -> torch.Tensor:
    """`rows` rows of `length` tokens, each from the start of its own held-out document (or the
    next piece of the books where documents are short)."""
    ids = []
    for text in read_documents(corpus_files("heldout")):
        ids += tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= rows * length:
            break
    return torch.tensor(ids[: rows * length]).view(rows, length)


def table(name: str, model, batch: torch.Tensor) -> list[str]:
    layers = dict(ttt_layers(model))
    chunk = next(iter(layers.values())).chunk_size
    off = clip_report(model, batch, None)
    fast = ", ".join(f"layer {i} {layer.last_stats['fast_ratio']:.3g}" for i, layer in layers.items())
    norms = torch.cat([r.norms for r in off.records])
    rel = torch.cat([r.relative_norms() for r in off.records])
    q = (0.0, 0.1, 0.5, 0.9, 1.0)
    quant = lambda x: " | ".join(f"{v:.3g}" for v in torch.quantile(x, torch.tensor(q, dtype=torch.float64)).tolist())  # noqa: E731
    lines = [
        f"### {name}: TTT layers {sorted(layers)}, chunk {chunk}, {norms.numel()} chunk updates over {batch.shape[0]} x {batch.shape[1]} tokens",
        "",
        "| quantity | min | p10 | median | p90 | max | mean |",
        "|---|---|---|---|---|---|---|",
        f"| update norm ||dW|| (clipping off) | {quant(norms)} | {float(norms.mean()):.3g} |",
        f"| eta ||dW|| / ||W0|| (clipping off) | {quant(rel)} | {float(rel.mean()):.3g} |",
    ]
    for label, mode in (("absolute", "absolute"), ("relative", "relative")):
        report = clip_report(model, batch, PAPER_TAU, mode)
        factors = torch.cat([r.factors for r in report.records])
        lines.append(f"| clip factor, tau 1e-5 {label} | {quant(factors)} | {report.mean_factor():.3g} |")
    per_token = (PAPER_TAU * chunk / norms).clamp(max=1.0)
    lines.append(f"| clip factor, tau 1e-5 per token (x {chunk}, from the norms) | {quant(per_token)} | {float(per_token.mean()):.3g} |")
    lines += ["", f"fast-weight ratio eta ||S|| / ||W0|| at the end of a row, clipping off: {fast}", ""]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["demo", "135m"], choices=["demo", "135m", "gguf"])
    p.add_argument("--gguf", type=Path, help="the GGUF checkpoint of --models gguf")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--out", type=Path, default=Path("runs/update-clipping"))
    args = p.parse_args()
    from transformers import AutoTokenizer

    import inplace_ttt

    started = time.perf_counter()
    lines = [f"# clip factors at tau = {PAPER_TAU:g}; torch {torch.__version__}, {torch.get_num_threads()} threads", ""]
    for name in args.models:
        if name == "gguf" and args.gguf is None:
            p.error("--models gguf needs --gguf FILE")
        final = {
            "demo": lambda: trained_demo(args.out / "demo"),
            "135m": lambda: trained_135m(args.out / "135m"),
            "gguf": lambda: trained_135m(args.out / "gguf", args.gguf),
        }[name]()
        model = inplace_ttt.from_pretrained(final).eval()
        batch = heldout_rows(AutoTokenizer.from_pretrained(final), args.rows, args.length)
        lines += table(name, model, batch)
    lines.append(f"{time.perf_counter() - started:.0f} s in all")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
