"""Copies of the `saved` checkpoints broken in the ways users break them, with the message each must
get: the eval and doctor commands name them alike (bad input: one message naming the file or
flag, exit code 2)."""

import json
import shutil


def broken_copy(saved, tmp_path, name, change):
    """A copy of the checkpoint `name` with `change(folder)` applied."""
    folder = tmp_path / f"{name}-broken"
    shutil.copytree(saved / name, folder)
    change(folder)
    return folder


def edit_json(key_path, value):
    def change(folder):
        data = json.loads((folder / "config.json").read_text())
        *parents, leaf = key_path.split(".")
        node = data
        for p in parents:
            node = node[p]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
        (folder / "config.json").write_text(json.dumps(data))

    return change


def cut_weights(fraction):
    def change(folder):
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])

    return change


BROKEN = {
    "truncated weights": (
        "ttt",
        cut_weights(0.5),
        r"model.safetensors is not a readable safetensors file \(.*incomplete metadata.*\): it is empty, cut short or corrupt",
    ),
    "empty weights": ("base", cut_weights(0.0), r"model.safetensors is not a readable safetensors file \(.*header too small.*\)"),
    "conv kernel edited": (
        "ttt",
        edit_json("inplace_ttt.conv_kernel", 3),
        r"TTT weights do not fit its config.json: .*conv_weight \[32, 5\] \(config.json makes it \[32, 3\]\)",
    ),
    "hidden size edited": ("base", edit_json("hidden_size", 64), r"the weights do not fit its config.json \(sizes differ"),
    "base_model_type missing": (
        "ttt",
        edit_json("inplace_ttt.base_model_type", None),
        r"config.json: inplace_ttt.base_model_type must name the transformers model type .*; got None",
    ),
    "config.json not JSON": ("ttt", lambda f: (f / "config.json").write_text("{oops"), r"config.json.* is not (a )?valid JSON"),
}
