"""`ittt moshi-kit`: small random Moshi parts to try the Moshi commands offline (`inplace_ttt.speech.kit.write_kit`)."""

from __future__ import annotations

import argparse

from .flags import prepare_moshi, user_path


def add(sub) -> None:
    kit = sub.add_parser(
        "moshi-kit",
        help="write a small random Mimi (varied codes), a tokenizer, a tiny LMModel, conversations and a training YAML: every Moshi command runs on them offline",
    )
    kit.add_argument("out", type=user_path, help="the kit's folder (created; its files are replaced)")
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
    parts = f"--mimi {k['mimi']} --mimi-config {k['mimi_config']} --tokenizer {k['tokenizer']} --lm-kwargs {k['lm_kwargs']}"
    print(f"moshi-kit: wrote {args.out} (moshi's own CheckpointInfo reads {k['moshi_config']}); try:")
    print(f"  ittt moshi-encode {k['data']}/train/data.jsonl {parts} --out {args.out.resolve()}/codes/train")
    print(f"  ittt moshi-encode {k['data']}/heldout/data.jsonl {parts} --out {args.out.resolve()}/codes/heldout")
    print(f"  ittt train {k['train_yaml']}")
    final = args.out.resolve() / "runs" / "moshi-ttt" / "final"
    print(f"  ittt moshi-infer {k['user']} {args.out.resolve()}/moshi.wav --weights {final}/model.safetensors --ttt {final}/ttt.safetensors {parts}")
    return 0
