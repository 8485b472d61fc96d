"""Ready for a GPU: bf16 against float64 on the device, and what In-Place TTT costs there.

One script, at most 8 minutes on one GPU, in two parts.

Accuracy (each a PASS/FAIL line; the script exits 1 on a FAIL): the same inputs and weights run
in bfloat16 and in float64 on the device; the error is ``||x_bf16 - x_f64|| / ||x_f64||``:
  op        `inplace_ttt` forward (the whole down projection, and the fast-weight term alone)
            and backward (dz, dv);
  layer     an `InPlaceTTTMLP` around a gated MLP with trained-looking targets: its output and
            its fast-weight term;
  generate  a converted Llama, prefill then greedy decoding through the cache: the bf16 model
            fed the float64 model's tokens, the logits of every decoded step;
  moshi     a converted `LMModel` forward (text and audio logits), and on CUDA `LMGen`'s step
            captured in a CUDA graph against the same step run eagerly (same dtype): the text
            tokens and the fast weights after every chunk (on CPU that part is skipped, said so).

Cost (bf16 on CUDA, float32 on CPU; medians, CUDA-synchronised; peak memory on CUDA):
  op        forward + backward of the op against the plain down projection at the MLP shapes of
            Qwen3-4B (2560 x 9728) and Moshi-7B (4096 x 11264: moshi's hidden_scale 4.125,
            2/3 of 16896 for its gating);
  model     prefill and per-token decode of a ~0.5B-shaped Llama (the paper's 500M: hidden 1024,
            24 layers, MLP 3072, vocabulary 32000) with TTT every 6th layer, against the same
            model unconverted.

    python benchmarks/gpu.py            # full shapes on CUDA (tiny ones without CUDA)
    python benchmarks/gpu.py --tiny     # tiny shapes: seconds, any device (the test suite runs this)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate  # noqa: E402  the prefill/decode benchmark's model and timing
import op  # noqa: E402  the operator benchmark's inputs and forward+backward
from moshi_shape import lm_kwargs  # noqa: E402

import inplace_ttt  # noqa: E402
from inplace_ttt.ops import inplace_ttt as ttt_op  # noqa: E402

F64, BF16 = torch.float64, torch.bfloat16


@dataclass(frozen=True)
class Shapes:
    acc_tokens: int  # the op's and the layer's accuracy inputs: tokens per row
    acc_chunk: int
    acc_width: tuple[int, int]  # (d, h) of the accuracy checks
    gen: dict  # the generate check's model
    gen_prompt: int
    gen_new: int
    moshi_dim: int
    moshi_layers: int
    moshi_steps: int
    mlp: dict  # name -> (d, h) timed
    op_tokens: int
    op_chunk: int
    model: dict  # the ~0.5B model
    prompt: int
    new: int
    batches: tuple[int, ...]
    repeats: int


FULL = Shapes(
    acc_tokens=4096,
    acc_chunk=256,
    acc_width=(1024, 3072),
    gen=dict(hidden=512, layers=12, vocab=1000, chunk=128),
    gen_prompt=1024,
    gen_new=64,
    moshi_dim=512,
    moshi_layers=12,
    moshi_steps=200,
    mlp={"Qwen3-4B MLP": (2560, 9728), "Moshi-7B MLP": (4096, 11264)},
    op_tokens=16384,
    op_chunk=1024,
    model=dict(hidden=1024, intermediate=3072, layers=24, vocab=32000, chunk=1024),
    prompt=8192,
    new=128,
    batches=(1, 4),
    repeats=3,
)
TINY = Shapes(
    acc_tokens=96,
    acc_chunk=16,
    acc_width=(32, 64),
    gen=dict(hidden=64, layers=6, vocab=100, chunk=8),
    gen_prompt=40,
    gen_new=8,
    moshi_dim=64,
    moshi_layers=7,
    moshi_steps=12,
    mlp={"tiny MLP": (64, 160)},
    op_tokens=256,
    op_chunk=32,
    model=dict(hidden=64, intermediate=160, layers=6, vocab=100, chunk=16),
    prompt=64,
    new=4,
    batches=(1, 2),
    repeats=2,
)
TOLERANCE = 2e-2  # relative error: bf16 keeps 8 bits (eps 2^-8 = 3.9e-3); sums over chunks and layers add a few eps


def rel(x, ref) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))


class Checks:
    """PASS/FAIL lines of the accuracy part."""

    def __init__(self):
        self.rows, self.failed = [], 0

    def add(self, part: str, what: str, error: float | None, detail: str = "", tolerance: float = TOLERANCE) -> None:
        ok = error is None or error <= tolerance
        self.failed += not ok
        shown = "-" if error is None else f"{error:.2e}"
        self.rows.append(f"| {part} | {what} | {shown} | {'-' if error is None else f'{tolerance:.0e}'} | {'PASS' if ok else 'FAIL'} | {detail} |")

    def skip(self, part: str, what: str, why: str) -> None:
        self.rows.append(f"| {part} | {what} | - | - | SKIP | {why} |")

    def table(self) -> str:
        head = ["| part | bf16 against float64 | relative error | tolerance | result | detail |", "|---|---|---|---|---|---|"]
        return "\n".join(head + self.rows)


def trained_targets(model, seed=0, std=0.02) -> None:
    """Non-zero target convolutions, as after training, so that the fast weights change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(model):
            layer.ttt.conv_weight.copy_(torch.randn(layer.ttt.conv_weight.shape, generator=g) * std)


# accuracy ------------------------------------------------------------------------------------


def check_op(checks: Checks, s: Shapes, device) -> None:
    d, h = s.acc_width
    g = torch.Generator().manual_seed(0)
    z64 = torch.randn(2, s.acc_tokens, h, generator=g, dtype=F64)
    v64 = torch.randn(2, s.acc_tokens, d, generator=g, dtype=F64) * 0.05
    w64 = torch.randn(d, h, generator=g, dtype=F64) * 0.02
    grad = torch.randn(2, s.acc_tokens, d, generator=g, dtype=F64)
    out, fast, grads = {}, {}, {}
    for dtype in (F64, BF16):
        z, v, w = (t.to(device=device, dtype=dtype, copy=True).requires_grad_(t is not w64) for t in (z64, v64, w64))
        out[dtype] = ttt_op(z, v, w, 1.0, s.acc_chunk)
        out[dtype].backward(grad.to(device, dtype))
        grads[dtype] = (z.grad, v.grad)
        with torch.no_grad():
            fast[dtype] = ttt_op(z, v, None, 1.0, s.acc_chunk)
    share = rel(fast[F64], out[F64] - fast[F64])
    where = f"B=2, T={s.acc_tokens}, chunk {s.acc_chunk}, d={d}, h={h}"
    checks.add("op", "forward", rel(out[BF16], out[F64]), where)
    checks.add("op", "fast-weight term alone", rel(fast[BF16], fast[F64]), f"the term is {share:.2g} x the plain projection")
    checks.add("op", "backward dz", rel(grads[BF16][0], grads[F64][0]))
    checks.add("op", "backward dv", rel(grads[BF16][1], grads[F64][1]))


def check_layer(checks: Checks, s: Shapes, device) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    d, h = s.acc_width
    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=d, intermediate_size=h))
    layer = inplace_ttt.InPlaceTTTMLP(mlp, inplace_ttt.TTTConfig(chunk_size=s.acc_chunk, ttt_lr=3.0))
    with torch.no_grad():
        layer.ttt.conv_weight.normal_(0, 0.02)
    x = torch.randn(2, s.acc_tokens, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    out, fast = {}, {}
    for dtype in (F64, BF16):
        m = copy.deepcopy(layer).to(device, dtype)
        xs = x.to(device, dtype)
        with torch.no_grad():
            out[dtype] = m(xs)
            m.down.weight.zero_()  # the fast-weight term alone (a difference of two bf16 outputs would measure its rounding)
            fast[dtype] = m(xs)
    checks.add("layer", "output", rel(out[BF16], out[F64]), f"T={s.acc_tokens}, chunk {s.acc_chunk}, eta 3")
    checks.add("layer", "fast-weight term", rel(fast[BF16], fast[F64]), f"the term is {rel(fast[F64], out[F64] - fast[F64]):.2g} x the plain MLP")


@torch.no_grad()
def decoded_logits(model, ids, new: int, tokens=None):
    """Prefill `ids`, then `new` greedy steps through the cache (or feed `tokens`): the tokens and the logits of each step."""
    out = model(input_ids=ids, use_cache=True)
    cache, logits, chosen = out.cache, [out.logits[:, -1].double()], []
    for i in range(new):
        token = logits[-1].argmax(-1, keepdim=True) if tokens is None else tokens[:, i : i + 1]
        chosen.append(token)
        out = model(input_ids=token, cache=cache, use_cache=True)
        logits.append(out.logits[:, -1].double())
    return torch.cat(chosen, 1), torch.stack(logits, 1)


def check_generate(checks: Checks, s: Shapes, device) -> None:
    _, model = generate.build(SimpleNamespace(**s.gen))
    ids = torch.randint(0, s.gen["vocab"], (2, s.gen_prompt), generator=torch.Generator().manual_seed(0)).to(device)
    tokens, ref = decoded_logits(model.to(device, F64), ids, s.gen_new)
    ours_tokens, _ = decoded_logits(model.to(device, BF16), ids, s.gen_new)
    _, ours = decoded_logits(model, ids, s.gen_new, tokens)
    agree = float((ours_tokens == tokens).double().mean())
    detail = f"prompt {s.gen_prompt}, {s.gen_new} steps, chunk {s.gen['chunk']}; greedy tokens agree {agree:.0%}"
    checks.add("generate", "logits of every decoded step", rel(ours, ref), detail, tolerance=5e-2)


def check_moshi(checks: Checks, s: Shapes, device) -> None:
    from moshi.models.lm import LMModel

    torch.manual_seed(0)
    lm = LMModel(**lm_kwargs(s.moshi_dim, s.moshi_layers, context=3000), device="cpu", dtype=torch.float32).eval()
    config = inplace_ttt.TTTConfig(layers="every 6", chunk_size=8, ttt_lr=1.0, target_source="token_embeddings")
    inplace_ttt.convert(lm, config)
    trained_targets(lm)
    codes = torch.randint(0, 2048, (2, lm.num_codebooks, 40), generator=torch.Generator().manual_seed(0))
    codes[:, 0] = codes[:, 0] % 32000
    outs = {}
    for dtype in (F64, BF16):
        lm.to(device, dtype)
        with torch.no_grad():
            outs[dtype] = lm(codes.to(device))
    text = rel(outs[BF16].text_logits.nan_to_num(), outs[F64].text_logits.nan_to_num())
    audio = rel(outs[BF16].logits.nan_to_num(), outs[F64].logits.nan_to_num())
    checks.add(
        "moshi",
        "LMModel forward: text and audio logits",
        max(text, audio),
        f"dim {s.moshi_dim}, {s.moshi_layers} layers, TTT on {[i for i, _ in inplace_ttt.ttt_layers(lm)]}, chunk 8",
        5e-2,
    )
    if device.type != "cuda":
        checks.skip("moshi", "LMGen step in a CUDA graph", "no CUDA device: LMGen captures its step in a CUDA graph on CUDA only")
        return
    from moshi.utils.compile import no_cuda_graph

    lm.to(device, BF16)
    graphed = lmgen_steps(lm, s.moshi_steps, device)
    with no_cuda_graph():
        eager = lmgen_steps(lm, s.moshi_steps, device)
    same = float((graphed[0] == eager[0]).double().mean())
    updates = graphed[2]
    detail = f"{s.moshi_steps} steps, text tokens identical {same:.0%}, chunk updates per row {updates} (eager {eager[2]})"
    error = rel(graphed[1], eager[1]) if updates == eager[2] and updates > 0 else float("inf")
    checks.add("moshi", "LMGen step captured in a CUDA graph, against eager (bf16 both)", error, detail, tolerance=1e-2)


@torch.no_grad()
def lmgen_steps(lm, steps: int, device):
    """Greedy `LMGen` steps on fixed user audio: text tokens, the TTT layers' fast weights, updates per row."""
    from moshi.models.lm import LMGen

    from inplace_ttt.families.moshi import update_counts

    gen = LMGen(lm, use_sampling=False)
    user = torch.randint(0, lm.card, (1, lm.num_codebooks - lm.dep_q - 1, 1), generator=torch.Generator().manual_seed(1)).to(device)
    text = []
    with gen.streaming(1):
        for _ in range(steps):
            out = gen.step(user)
            if out is not None:
                text.append(out[:, 0])
        fast = torch.cat([layer._streaming_state.steps.fast_sum.flatten() for _, layer in inplace_ttt.ttt_layers(lm)])
        updates = min(int(c.min()) for c in update_counts(lm).values())
    return torch.cat(text), fast.double(), updates


# cost -----------------------------------------------------------------------------------------


def timed(fn, repeats: int, device) -> tuple[float, float | None]:
    """Median seconds of `fn` after one warm-up, and its peak memory on CUDA (MiB above the start)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - start) / 2**20
    return statistics.median(samples), peak


def op_costs(s: Shapes, device, dtype) -> list[str]:
    lines = [
        "| MLP shape (d x h) | T | chunk | plain ms | TTT ms | x | plain peak MiB | TTT peak MiB | x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (d, h) in s.mlp.items():
        inputs = op.make_inputs(s.op_tokens, d, h, device=device, dtype=dtype)
        res = {m: timed(lambda m=m, inputs=inputs: op.run(m, *inputs, s.op_chunk), s.repeats, device) for m in ("plain", "ittt")}
        (tp, mp), (tt, mt) = res["plain"], res["ittt"]
        mem = "- | - | -" if mp is None else f"{mp:.0f} | {mt:.0f} | {mt / mp:.2f}"
        lines.append(f"| {name} ({d} x {h}) | {s.op_tokens} | {s.op_chunk} | {tp * 1e3:.2f} | {tt * 1e3:.2f} | {tt / tp:.2f} | {mem} |")
        del inputs
    return lines


def model_costs(s: Shapes, device, dtype) -> list[str]:
    base, ttt = generate.build(SimpleNamespace(**s.model))
    base.to(device, dtype)
    ttt.to(device, dtype)
    n = sum(p.numel() for p in base.parameters()) / 1e6
    layers = [i for i, _ in inplace_ttt.ttt_layers(ttt)]
    lines = [
        f"{n:.0f}M parameters, {s.model['layers']} layers, hidden {s.model['hidden']}, TTT on layers {layers}, chunk {s.model['chunk']}; "
        f"prompt {s.prompt}, {s.new} new tokens",
        "",
        "| batch | prefill plain ms | prefill TTT ms | x | decode plain ms/token | decode TTT ms/token | x |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in s.batches:
        ids = torch.randint(0, s.model["vocab"], (batch, s.prompt), generator=torch.Generator().manual_seed(batch)).to(device)
        runs = {"base": [], "ttt": []}
        for m in (base, ttt):
            generate.run(m, ids, 2)  # warm-up
        for _ in range(s.repeats):
            for name, m in (("base", base), ("ttt", ttt)):  # interleaved: drift hits both
                runs[name].append(generate.run(m, ids, s.new))
        pre = {k: statistics.median(r[0] for r in v) * 1e3 for k, v in runs.items()}
        dec = {k: statistics.median(r[1] for r in v) * 1e3 for k, v in runs.items()}
        lines.append(
            f"| {batch} | {pre['base']:.1f} | {pre['ttt']:.1f} | {pre['ttt'] / pre['base']:.2f} | {dec['base']:.2f} | {dec['ttt']:.2f} | {dec['ttt'] / dec['base']:.2f} |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes (seconds); the default without CUDA")
    p.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = args.tiny or device.type != "cuda"
    s = TINY if tiny else FULL
    dtype = BF16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# benchmarks/gpu.py on {name}, torch {torch.__version__}, {'tiny' if tiny else 'full'} shapes", flush=True)
    checks = Checks()
    took = []
    for check in (check_op, check_layer, check_generate, check_moshi):
        t0 = time.perf_counter()
        check(checks, s, device)
        took.append(f"{check.__name__.removeprefix('check_')} {time.perf_counter() - t0:.1f} s")
    print("\n## Accuracy\n\n" + checks.table() + f"\n\n(took: {', '.join(took)})", flush=True)
    print(f"\n## The op against the plain down projection, forward + backward, {str(dtype).split('.')[-1]}\n", flush=True)
    print("\n".join(op_costs(s, device, dtype)), flush=True)
    print(f"\n## Prefill and decode, {str(dtype).split('.')[-1]}\n", flush=True)
    print("\n".join(model_costs(s, device, dtype)), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all; {checks.failed} accuracy check(s) failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
