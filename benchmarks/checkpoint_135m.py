"""A 135M-parameter checkpoint's shape, start to finish: `ittt train`, decoding, `ittt doctor`.

The shape of the small pretrained Llama of issue 18 (SmolLM2-135M's: 30 layers, hidden 576, MLP
1536, 9 heads, 3 key-value heads, vocabulary 49152, tied embeddings, RoPE theta 1e5) with random
weights (the speed does not depend on them), TTT on every 6th layer (0, 6, ..., 24). Three parts:

- train: `ittt train` (the engine, `run_training`) on 1 row of 1024 tokens per step, the
  unconverted model (`ttt: null`) against the converted one, runs alternated; time per step from
  a callback, median over the timed steps of all runs;
- decode: greedy decoding through the cache after a prompt, the unconverted model against its
  converted copy with non-zero targets (updates happen while decoding), interleaved; median and
  mean ms per token;
- doctor: `ittt doctor` on the converted checkpoint with `--base` (3 chunks x 2 rows), wall time
  of the command in a fresh process, and of the `doctor` call alone.

    python benchmarks/checkpoint_135m.py                   # all three, 2 threads
    python benchmarks/checkpoint_135m.py --parts decode --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

import inplace_ttt

SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), attn_implementation="sdpa")


def ttt_config(chunk: int) -> inplace_ttt.TTTConfig:
    return inplace_ttt.TTTConfig(layers="every 6", chunk_size=chunk, ttt_lr=1.0)


def with_targets(model):
    """Non-zero targets, as after training, so that fast weights change the outputs."""
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(model):
            layer.ttt.conv_weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(layer.layer_idx))
    return model


def write_workspace(root: Path, chunk: int) -> dict:
    """The base model and its tokenizer (a small word-level one: the data's ids stay below the
    model's vocabulary), training documents, and the converted checkpoint for the doctor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(2000)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    base = base_model()
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(0)
    docs = root / "docs"
    docs.mkdir()
    for i in range(8):
        ids = torch.randint(0, len(words), (3000,), generator=g).tolist()
        (docs / f"doc{i}.txt").write_text(" ".join(words[j] for j in ids))
    converted = inplace_ttt.convert(base, ttt_config(chunk))
    converted.save_pretrained(root / "ttt")
    tokenizer.save_pretrained(root / "ttt")
    return {"base": root / "base", "ttt": root / "ttt", "docs": docs}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def train_part(ws: dict, root: Path, args) -> dict:
    from inplace_ttt.train.causal_lm import prepare
    from inplace_ttt.train.config import DataConfig, RunConfig, TrainConfig
    from inplace_ttt.train.trainer import run_training

    times: dict[str, list[float]] = {"base": [], "ttt": []}
    for repeat in range(args.repeats):
        for name in ("base", "ttt"):  # alternated, so drift hits both
            config = RunConfig(
                model=str(ws["base"]),
                ttt=ttt_config(args.chunk) if name == "ttt" else None,
                data=DataConfig(train=[str(ws["docs"])], row_length=args.row_length),
                train=TrainConfig(
                    output_dir=str(root / f"run-{name}-{repeat}"),
                    max_steps=args.warmup + args.steps,
                    per_device_train_batch_size=1,
                    learning_rate=1e-5,
                    warmup_ratio=0.0,
                    logging_steps=1000,
                    save_steps=100_000,
                    report_to=[],
                    doctor=False,
                    bf16="false",
                ),
            )
            timer = StepTimer()
            run_training(config, prepare, callbacks=[timer])
            times[name] += timer.times[args.warmup :]
    return {name: args.row_length / statistics.median(t) for name, t in times.items()}


class Decoder:
    """Greedy decoding of `model` through its cache, one timed step at a time."""

    @torch.no_grad()
    def __init__(self, model, ids):
        self.model = model
        out = model(input_ids=ids, use_cache=True)
        self.cache, self.token = out.cache, out.logits[:, -1:].argmax(-1)

    @torch.no_grad()
    def step(self) -> float:
        started = time.perf_counter()
        out = self.model(input_ids=self.token, cache=self.cache, use_cache=True)
        self.token = out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - started


def decode_part(args) -> dict:
    """Both models decode step by step in turn (base, TTT, base, ...), so that a slow moment of a
    shared machine hits both; per model the median and mean step, and the median per-step ratio."""
    base = base_model().eval()
    ttt = with_targets(inplace_ttt.convert(copy.deepcopy(base), ttt_config(args.decode_chunk))).eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"base": [], "ttt": []}
    for _ in range(args.repeats):
        decoders = {"base": Decoder(base, ids), "ttt": Decoder(ttt, ids)}
        for i in range(args.new + 2):
            for name, decoder in decoders.items():
                t = decoder.step()
                if i >= 2:  # warm-up steps
                    times[name].append(t)
    ratio = statistics.median(t / b for t, b in zip(times["ttt"], times["base"]))
    return {"ratio": ratio, **{name: (statistics.median(t) * 1e3, statistics.fmean(t) * 1e3) for name, t in times.items()}}


def doctor_part(ws: dict, args) -> dict:
    from transformers import AutoTokenizer

    from inplace_ttt.documents import read_documents

    cmd = [sys.executable, "-m", "inplace_ttt.cli", "doctor", str(ws["ttt"]), "--data", str(ws["docs"]), "--base", str(ws["base"])]
    started = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    command = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"ittt doctor failed:\n{run.stdout}\n{run.stderr}")
    model = inplace_ttt.from_pretrained(ws["ttt"]).train()
    base = AutoModelForCausalLM.from_pretrained(ws["base"])
    ids = AutoTokenizer.from_pretrained(ws["base"])("\n\n".join(read_documents([str(ws["docs"])])), return_tensors="pt").input_ids
    length = 3 * args.chunk
    ids = ids[:, : 2 * length].view(2, length)
    started = time.perf_counter()
    report = inplace_ttt.doctor(model, ids, base)
    call = time.perf_counter() - started
    return {"command": command, "call": call, "ok": report.ok, "rows": f"2 x {length}"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", default=["train", "decode", "doctor"], choices=["train", "decode", "doctor"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=512, help="TTT chunk size (train, doctor; a row holds at least two); decode uses --decode-chunk")
    p.add_argument("--decode-chunk", type=int, default=256)
    p.add_argument("--row-length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    head = (
        f"# random weights of the 135M shape (30 layers, hidden 576, MLP 1536, 9/3 heads, vocab 49152, tied); TTT on "
        f"every 6th layer; fp32, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(head, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = write_workspace(root, args.chunk) if {"train", "doctor"} & set(args.parts) else None
        if "train" in args.parts:
            speed = train_part(ws, root, args)
            print(
                f"\n## ittt train, 1 x {args.row_length} tokens per step, chunk {args.chunk}, AdamW; median of "
                f"{args.steps} steps x {args.repeats} runs each, alternated"
            )
            print("| model | tokens/s | x base |\n|---|---|---|")
            for name, s in speed.items():
                print(f"| {name} | {s:.0f} | {s / speed['base']:.3f} |", flush=True)
        if "decode" in args.parts:
            ms = decode_part(args)
            print(
                f"\n## decode, batch {args.batch}, prompt {args.prompt}, {args.new} greedy tokens x {args.repeats} repeats, "
                f"chunk {args.decode_chunk} (updates while decoding), the two models stepping in turn"
            )
            print("| model | median ms/token | x base | mean ms/token | x base |\n|---|---|---|---|---|")
            for name in ("base", "ttt"):
                med, mean = ms[name]
                print(f"| {name} | {med:.2f} | {med / ms['base'][0]:.3f} | {mean:.2f} | {mean / ms['base'][1]:.3f} |", flush=True)
            print(f"median of the per-step ratios TTT / base: {ms['ratio']:.3f}")
        if "doctor" in args.parts:
            d = doctor_part(ws, args)
            print(f"\n## ittt doctor --base, {d['rows']} tokens, chunk {args.chunk}")
            print(
                f"| what | seconds |\n|---|---|\n| the command (fresh process: imports, loading both models, tokenizing) | "
                f"{d['command']:.1f} |\n| the doctor call alone | {d['call']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
