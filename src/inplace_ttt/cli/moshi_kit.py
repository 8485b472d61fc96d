"""`ittt moshi-kit`: small random Moshi parts to try the Moshi commands offline (`inplace_ttt.speech.kit.write_kit`)."""

from __future__ import annotations

import argparse
import shlex

from .flags import prepare_moshi, user_path


def add(sub) -> None:
    kit = sub.add_parser(
        "moshi-kit",
        help="write a small random Mimi (varied codes), a tokenizer, a tiny LMModel, conversations and a training YAML: every Moshi command runs on them offline",
    )
    kit.add_argument("out", type=user_path, help="the kit's folder: new, empty, or an earlier kit's (whose files are replaced)")
    kit.add_argument("--seed", type=int, default=0, help="random seed of the weights and the synthetic speech")
    kit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prepare_moshi("cpu")
    import torch

    from ..speech.kit import write_kit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run many times faster on one thread than on several
    try:
        paths = write_kit(args.out, seed=args.seed)
    finally:
        torch.set_num_threads(threads)
    k = {name: str(path) for name, path in paths.items()}
    out = args.out.resolve()
    final = out / "runs" / "moshi-ttt" / "final"
    parts = ["--mimi", k["mimi"], "--mimi-config", k["mimi_config"], "--tokenizer", k["tokenizer"], "--lm-kwargs", k["lm_kwargs"]]
    model = ["--weights", f"{final}/model.safetensors", "--ttt", f"{final}/ttt.safetensors", *parts]
    walk_through = [
        *(["moshi-encode", f"{k['data']}/{split}/data.jsonl", *parts, "--out", f"{out}/codes/{split}"] for split in ("train", "heldout")),
        ["train", k["train_yaml"]],
        ["moshi-infer", k["user"], f"{out}/moshi.wav", *model],
        [
            "moshi-eval",
            "--model",
            f"base={k['weights']}",
            "--model",
            f"ttt={final}",
            "--data",
            f"{out}/codes/heldout",
            "--lm-kwargs",
            k["lm_kwargs"],
            "--out",
            f"{out}/moshi-eval",
        ],
        ["moshi-serve", *model],
    ]
    print(f"moshi-kit: wrote {out} (moshi's own CheckpointInfo reads {k['moshi_config']}); try:")
    for command in walk_through:
        print("  ittt " + shlex.join(command))
    return 0
