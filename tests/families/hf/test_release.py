"""The authors' release format in and out, against a float64 transcription of their math.

Their model files cannot be imported here (their fork of transformers 4.57 and VeOmni), so each
test builds a tiny Qwen3 or Llama checkpoint *in their format*: a transformers model saved with
their config keys (written as transformers 4.57 writes them: ``rope_theta``, ``rope_scaling``) and
their extra weights ``model.layers.{i}.mlp.ttt_conv.weight`` / ``ttt_proj.weight``. The reference
(`tests.release_reference`) runs the plain transformers model with its TTT MLPs replaced by their
math; nothing from `src/` is in it.
"""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import inplace_ttt
from inplace_ttt.families.hf import is_ttt_checkpoint, quiet_transformers
from tests.release_reference import ReleaseModel
from tests.tiny_hf import VOCAB, converted, tiny

C = 4  # chunk
LR = 0.5
LAYERS = [0, 2, 4]  # 4 is past the tiny models' last layer (3), as their recipe lists 36 for 36 layers
FAMILY_ARCH = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
pytestmark = pytest.mark.filterwarnings("ignore:.*ttt_layers lists \\[4\\]:UserWarning")  # layer 4's warning: asserted in `load`


def release_checkpoint(path, family="qwen3", proj=True, target="hidden_states", layers=LAYERS, seed=1, **extra):
    """A tiny float64 checkpoint in the release's format: `{path}` with config.json and model.safetensors."""
    model = tiny(family).double()
    model.save_pretrained(path)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    weights = load_file(path / "model.safetensors")
    for i in layers:
        if i < model.config.num_hidden_layers:  # their model has no module for a layer it lacks
            weights[f"model.layers.{i}.mlp.ttt_conv.weight"] = torch.randn(d, 1, 5, generator=g, dtype=torch.float64) * 0.3
            if proj:
                weights[f"model.layers.{i}.mlp.ttt_proj.weight"] = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((path / "config.json").read_text())
    rope = data.pop("rope_parameters")
    data.update(rope_theta=rope["rope_theta"], rope_scaling=None, torch_dtype="float64", architectures=[FAMILY_ARCH[family]])
    data.update(ttt_mode=True, ttt_layers=list(layers), ttt_chunk=C, ttt_lr=LR, ttt_proj=proj, ttt_target=target, **extra)
    (path / "config.json").write_text(json.dumps(data, indent=2))
    return path


def release_reference(path):
    """The plain transformers model of a release directory, its TTT MLPs computing their math (float64)."""
    data = json.loads((path / "config.json").read_text())
    with quiet_transformers():  # it does not know the TTT weights: the reference reads them itself
        model = getattr(transformers, data["architectures"][0]).from_pretrained(path, dtype=torch.float64, attn_implementation="sdpa")
    tensors = load_file(path / "model.safetensors")
    weights = {}
    for i in data["ttt_layers"]:
        if f"model.layers.{i}.mlp.ttt_conv.weight" in tensors:
            proj = tensors.get(f"model.layers.{i}.mlp.ttt_proj.weight")
            weights[i] = (tensors[f"model.layers.{i}.mlp.ttt_conv.weight"].requires_grad_(), proj.requires_grad_() if proj is not None else None)
    return ReleaseModel(model, weights, data["ttt_chunk"], data["ttt_lr"], data["ttt_target"]), weights


def load(path, **kw):
    with pytest.warns(UserWarning, match=r"ttt_layers lists \[4\], past this 4-layer model's last layer 3"):
        return inplace_ttt.from_pretrained(path, dtype=torch.float64, attn_implementation="sdpa", **kw)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def forward_backward(model, ids):
    """Logits and the gradient of a fixed random projection of them (every output position counts)."""
    out = model(input_ids=ids, use_cache=False).logits
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    (out * r).sum().backward()
    return out.detach()


def errors(ours, ref, ref_weights, ids):
    """Relative errors of our model against the reference: logits, then every parameter's gradient."""
    out_ours, out_ref = forward_backward(ours, ids), forward_backward(ref, ids)
    errs = {"logits": rel(out_ours, out_ref)}
    ref_params = dict(ref.model.named_parameters())
    for name, p in ours.named_parameters():
        if ".ttt." in name:
            i = int(name.split(".")[2])
            conv, proj = ref_weights[i]
            want = conv.grad[:, 0] if name.endswith("conv_weight") else proj.grad.T  # our target_weight is W^T
        else:
            want = ref_params[name].grad
        errs[name] = rel(p.grad, want)
    return errs


@pytest.mark.parametrize("family", ["qwen3", "llama"])
@pytest.mark.parametrize("proj", [True, False])
@pytest.mark.parametrize("target", ["hidden_states", "input_embed"])
@pytest.mark.parametrize("T", [12, 14])  # a multiple of the chunk and not (their zero-padded last chunk)
def test_loaded_model_equals_their_math(tmp_path, family, proj, target, T):
    path = release_checkpoint(tmp_path, family, proj=proj, target=target)
    ours = load(path)
    ref, ref_weights = release_reference(path)
    assert [i for i, _ in inplace_ttt.ttt_layers(ours)] == [0, 2]
    ids = torch.randint(3, VOCAB, (2, T), generator=torch.Generator().manual_seed(3))
    errs = errors(ours, ref, ref_weights, ids)
    assert max(errs.values()) <= 1e-9, {k: v for k, v in errs.items() if v > 1e-9}
    assert len(errs) == 1 + len(list(ours.parameters()))


@pytest.mark.parametrize("wrong", ["transposed projection", "flipped kernel"])
def test_a_wrong_mapping_fails_the_comparison(tmp_path, wrong):
    path = release_checkpoint(tmp_path, "qwen3")
    ours = load(path)
    with torch.no_grad():
        for _, layer in inplace_ttt.ttt_layers(ours):
            if wrong == "transposed projection":
                layer.ttt.target_weight.copy_(layer.ttt.target_weight.T.clone())
            else:
                layer.ttt.conv_weight.copy_(layer.ttt.conv_weight.flip(1))
    ref, ref_weights = release_reference(path)
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(3))
    errs = errors(ours, ref, ref_weights, ids)
    assert errs["logits"] > 1e-3, errs["logits"]  # the correct mapping gives <= 1e-9


@pytest.mark.parametrize("proj", [True, False])
def test_export_import_round_trip_is_exact(tmp_path, proj):
    model = converted("qwen3", target_projection=proj).double()
    out = inplace_ttt.export_release(model, tmp_path / "release")
    loaded = inplace_ttt.from_pretrained(out, dtype=torch.float64)
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    params = dict(loaded.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p), name


@pytest.mark.parametrize(
    "family, switches",
    [
        ("qwen3", {"target_source": "hidden_states"}),
        ("llama", {"target_source": "token_embeddings"}),
        ("qwen3", {"target_projection": False}),  # their ttt_proj: false
        ("llama", {"target_conv": False}),  # written as a convolution with one centre tap
    ],
)
def test_export_is_what_their_model_computes(tmp_path, family, switches):
    model = converted(family, **switches).double()
    out = inplace_ttt.export_release(model, tmp_path / "release")
    data = json.loads((out / "config.json").read_text())
    proj = switches.get("target_projection", True)
    assert data["model_type"] == family and data["architectures"] == [FAMILY_ARCH[family]]
    assert {k: data[k] for k in ("ttt_mode", "ttt_layers", "ttt_chunk", "ttt_lr", "ttt_proj", "ttt_target")} == {
        "ttt_mode": True,
        "ttt_layers": [0, 2],
        "ttt_chunk": 4,
        "ttt_lr": 0.5,
        "ttt_proj": proj,
        "ttt_target": {"hidden_states": "hidden_states", "token_embeddings": "input_embed"}[switches.get("target_source", "hidden_states")],
    }
    assert data["rope_theta"] == model.config.rope_parameters["rope_theta"] and data["rope_scaling"] is None  # what 4.57 reads
    assert "inplace_ttt" not in data
    tensors = load_file(out / "model.safetensors")
    kinds = ("conv", "proj") if proj else ("conv",)
    assert sorted(k for k in tensors if "ttt" in k) == [f"model.layers.{i}.mlp.ttt_{w}.weight" for i in (0, 2) for w in kinds]
    assert tensors["model.layers.0.mlp.ttt_conv.weight"].shape == (32, 1, 5)
    ref, ref_weights = release_reference(out)
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(3))
    errs = errors(model, ref, ref_weights, ids)
    assert max(errs.values()) <= 1e-9, {k: v for k, v in errs.items() if v > 1e-9}


def test_a_loaded_release_model_generates_for_a_batch(tmp_path):
    """Their inference model reads row 0 only; ours gives every row what it gives that row alone."""
    model = load(release_checkpoint(tmp_path, "llama")).float().eval()
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    alone = [model.generate(input_ids=ids[b : b + 1], max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None) for b in range(2)]
    assert torch.equal(out, torch.cat(alone))


def test_ittt_eval_reads_a_release_checkpoint(tmp_path, capsys):
    from inplace_ttt.cli import main
    from tests.tiny_hf import tiny_tokenizer

    path = release_checkpoint(tmp_path / "release")
    tiny_tokenizer(["a", "b", "c"]).save_pretrained(path)
    (tmp_path / "doc.txt").write_text(" ".join("abc"[i % 3] for i in range(200)))
    with pytest.warns(UserWarning, match=r"ttt_layers lists \[4\]"):
        code = main(["eval", "--model", str(path), "--tasks", "loss", "--lengths", "64", "--data", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["models"]["release"]["ttt"] is True and results["models"]["release"]["loss_by_position"]["loss"]


def test_ittt_train_continues_a_release_checkpoint_and_exports_it_back(tmp_path, capsys):
    import yaml

    from inplace_ttt.cli import main
    from tests.tiny_hf import tiny_tokenizer

    path = release_checkpoint(tmp_path / "release")
    words = [f"w{i}" for i in range(40)]
    tiny_tokenizer(words).save_pretrained(path)
    (tmp_path / "data").mkdir()
    for i in range(4):
        (tmp_path / "data" / f"{i}.txt").write_text(" ".join(words[(i + j) % 7] for j in range(40)))
    config = {
        "model": str(path),
        "ttt": {"layers": "every 2", "chunk_size": 4},  # ignored: the checkpoint's own settings load
        "data": {"train": [str(tmp_path / "data")], "row_length": 16},
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "save_steps": 100,
            "learning_rate": 1e-3,
            "report_to": [],
            "doctor": False,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning, match=r"ttt_layers lists \[4\]"):
        assert main(["train", str(tmp_path / "run.yaml")]) == 0, capsys.readouterr().err
    trained = inplace_ttt.from_pretrained(tmp_path / "run" / "final", dtype=torch.float64)
    assert trained.config.inplace_ttt["layers"] == [0, 2] and trained.config.inplace_ttt["chunk_size"] == C
    start = load_file(path / "model.safetensors")["model.layers.0.mlp.ttt_conv.weight"][:, 0]
    assert not torch.equal(dict(trained.named_parameters())["model.layers.0.mlp.ttt.conv_weight"], start)  # it trained
    assert main(["export", str(tmp_path / "run" / "final"), str(tmp_path / "back"), "--format", "release"]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["ttt_layers"] == [0, 2]


def test_is_ttt_checkpoint_recognises_the_release(tmp_path):
    path = release_checkpoint(tmp_path)
    assert is_ttt_checkpoint(path)
    data = json.loads((path / "config.json").read_text())
    for key in ("ttt_mode", "ttt_layers", "ttt_chunk", "ttt_lr", "ttt_proj", "ttt_target"):
        data.pop(key)
    (path / "config.json").write_text(json.dumps(data))
    assert not is_ttt_checkpoint(path)  # a plain Qwen3 directory


# bad input: one clear message naming the field, and nothing loaded -------------------------


def _edit_config(path, **changes):
    data = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            data.pop(k)
        else:
            data[k] = v
    (path / "config.json").write_text(json.dumps(data))


def _edit_weights(path, edit):
    weights = load_file(path / "model.safetensors")
    edit(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ttt_target": "embeddings"}, r"ttt_target must be one of \['hidden_states', 'input_embed'\]; got 'embeddings'"),
        ({"ttt_mode": ...}, r"ttt_mode is missing"),
        ({"ttt_mode": False}, r"ttt_mode is false: their model runs this checkpoint without TTT"),
        ({"ttt_mode": "yes"}, r"ttt_mode must be true or false; got 'yes'"),
        ({"ttt_layers": [0, -2]}, r"ttt_layers must be a non-empty list of layer indices >= 0; got \[0, -2\]"),
        ({"ttt_layers": [5, 9]}, r"ttt_layers \[5, 9\] names no layer of this 4-layer model"),
        ({"ttt_chunk": 0}, r"ttt_chunk must be an integer >= 1; got 0"),
        ({"ttt_lr": "3"}, r"ttt_lr must be a finite number > 0; got '3'"),
        ({"ttt_proj": 1}, r"ttt_proj must be true or false; got 1"),
        ({"ttt_key_norm": True}, r"\['ttt_key_norm'\] are not keys of the authors' release"),
        (
            {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
            r"model_type 'qwen2' carries the release's ttt_\* keys, but the release format covers only \['llama', 'qwen3'\]",
        ),
        ({"architectures": ["LlamaForCausalLM"]}, r"architectures must be \['Qwen3ForCausalLM'\] for model_type 'qwen3'"),
    ],
)
def test_bad_config_is_named(tmp_path, changes, message):
    path = release_checkpoint(tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(ValueError, match=message):
        inplace_ttt.from_pretrained(path)


def test_pickled_weights_are_not_read(tmp_path):
    path = release_checkpoint(tmp_path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="has no .safetensors weights"):
        inplace_ttt.from_pretrained(path)


def test_a_sharded_checkpoint_loads(tmp_path):
    """As their merge script writes a large model: several safetensors files and an index."""
    one = release_checkpoint(tmp_path / "one")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tensors = load_file(one / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, sharded / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "config.json").write_text((one / "config.json").read_text())
    ids = torch.randint(3, VOCAB, (1, 10))
    with torch.no_grad():
        assert torch.equal(load(sharded)(input_ids=ids).logits, load(one)(input_ids=ids).logits)


def test_llama_with_mlp_bias_is_refused(tmp_path):
    path = release_checkpoint(tmp_path, "llama")
    _edit_config(path, mlp_bias=True)
    with pytest.raises(ValueError, match="mlp_bias is true: the release's TTT layers drop the down projection's bias"):
        inplace_ttt.from_pretrained(path)


def _drop_ttt(weights):
    for k in [k for k in weights if "ttt" in k]:
        del weights[k]


def _drop_proj(weights):
    del weights["model.layers.2.mlp.ttt_proj.weight"]


def _short_kernel(weights):
    weights["model.layers.2.mlp.ttt_conv.weight"] = weights["model.layers.2.mlp.ttt_conv.weight"][..., :3].contiguous()


def _wide_proj(weights):
    weights["model.layers.0.mlp.ttt_proj.weight"] = torch.zeros(32, 33, dtype=torch.float64)


def _fork_weight(weights):
    weights["model.layers.0.mlp.ttt_key_norm.weight"] = torch.ones(64, dtype=torch.float64)


def _stray_layer(weights):
    weights["model.layers.1.mlp.ttt_conv.weight"] = weights["model.layers.0.mlp.ttt_conv.weight"].clone()


@pytest.mark.parametrize(
    "edit, config, message",
    [
        (_drop_ttt, {}, r"ttt_mode true with ttt_layers \[0, 2\], but no weight file holds a TTT tensor"),
        (_drop_proj, {}, r"ttt_proj true\) needs \['model.layers.2.mlp.ttt_proj.weight'\], which no weight file holds"),
        (_short_kernel, {}, r"model.layers.2.mlp.ttt_conv.weight has shape \[32, 1, 3\]; hidden_size 32 and their kernel 5 make it \[32, 1, 5\]"),
        (_wide_proj, {}, r"model.layers.0.mlp.ttt_proj.weight has shape \[32, 33\]; .* make it \[32, 32\]"),
        (_fork_weight, {}, r"model.layers.0.mlp.ttt_key_norm.weight is not a TTT weight of the release format"),
        (_stray_layer, {}, r"the weights hold \['model.layers.1.mlp.ttt_conv.weight'\], but config.json's ttt_layers is \[0, 2\]"),
        (
            lambda w: None,
            {"ttt_proj": False},
            r"the weights hold \['model.layers.0.mlp.ttt_proj.weight', 'model.layers.2.mlp.ttt_proj.weight'\], but config.json's ttt_proj is false",
        ),
    ],
)
def test_weights_that_do_not_match_the_config_are_named_before_anything_loads(tmp_path, monkeypatch, edit, config, message):
    path = release_checkpoint(tmp_path)
    _edit_weights(path, edit)
    _edit_config(path, **config)
    loads = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    with pytest.raises(ValueError, match=message):
        inplace_ttt.from_pretrained(path)
    assert loads == []  # refused before any model was built


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            lambda m: inplace_ttt.convert(tiny("mistral"), inplace_ttt.TTTConfig(layers=[0], chunk_size=4)),
            r"model_type 'mistral': the release's model files cover only \['llama', 'qwen3'\]",
        ),
        (
            lambda m: inplace_ttt.convert(tiny("qwen3"), inplace_ttt.TTTConfig(layers=[0], chunk_size=4, conv_kernel=3)),
            r"conv_kernel is 3; the release's convolution has width 5",
        ),
        (lambda m: tiny("qwen3"), r"has no In-Place TTT layers: convert it first"),
        (lambda m: inplace_ttt.convert(tiny("llama", mlp_bias=True), inplace_ttt.TTTConfig(layers=[0], chunk_size=4)), r"mlp_bias is true"),
    ],
)
def test_export_refuses_what_their_files_cannot_express(tmp_path, setup, message):
    with pytest.raises(ValueError, match=message):
        inplace_ttt.export_release(setup(None), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_into_a_directory_with_files_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        inplace_ttt.export_release(converted("qwen3"), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # no temporary left behind
