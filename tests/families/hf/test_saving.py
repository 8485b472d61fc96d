"""A saved folder names the module transformers runs with ``trust_remote_code=True``; without this
package imported and without that flag, transformers refuses it rather than drop the fast weights."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inplace_ttt
from inplace_ttt.families.hf.saving import AUTO_MAP, READABLE_SINCE, REMOTE_MODULE
from tests.tiny_hf import converted, left_padded, logits

SRC = Path(inplace_ttt.__file__).parents[1]


def fresh_python(code: str, tmp_path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    """`code` in a new interpreter that has not imported this package (offline, its own module cache, no prompt)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)), "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


def test_the_folder_names_its_module(tmp_path):
    converted().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "inplace_ttt" and config["auto_map"] == AUTO_MAP
    assert (tmp_path / f"{REMOTE_MODULE}.py").is_file()


def test_the_folder_names_no_class_transformers_has(tmp_path):
    """`transformers serve` builds ``getattr(transformers, architectures[0])``: with the base class named
    there it served the base model without its TTT layers; with ours it cannot build anything."""
    import transformers

    converted().save_pretrained(tmp_path)
    (architecture,) = json.loads((tmp_path / "config.json").read_text())["architectures"]
    assert getattr(transformers, architecture, None) is None


def test_a_fresh_process_refuses_without_trust_remote_code_and_loads_with_it(tmp_path):
    model = converted()
    model.save_pretrained(tmp_path / "model")
    ids, mask = left_padded([13, 9], 13)
    save_file({"ids": ids, "mask": mask}, tmp_path / "batch.safetensors")
    run = fresh_python(
        f"""
        import sys
        from safetensors.torch import load_file, save_file
        from transformers import AutoModelForCausalLM
        folder = r"{tmp_path / "model"}"
        for flag in ({{}}, {{"trust_remote_code": False}}):
            try:
                AutoModelForCausalLM.from_pretrained(folder, **flag)
            except ValueError as e:
                assert "trust_remote_code=True" in str(e), e
            else:
                raise SystemExit("loaded without trust_remote_code")
        assert "inplace_ttt" not in sys.modules
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        assert "inplace_ttt" in sys.modules  # the folder's module imported the installed package
        batch = load_file(r"{tmp_path / "batch.safetensors"}")
        out = model(input_ids=batch["ids"], attention_mask=batch["mask"], use_cache=False).logits
        save_file({{"logits": out.detach().contiguous()}}, r"{tmp_path / "out.safetensors"}")
        print(type(model).__name__)
        """,
        tmp_path,
        [SRC],
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith(" LlamaForCausalLM\n")  # after the prompt transformers' refusals print
    assert torch.equal(load_file(tmp_path / "out.safetensors")["logits"], logits(model, ids, mask))


@pytest.mark.parametrize(
    "package, message",
    [
        (None, "it is not installed"),
        ("__version__ = '0.0.1'\n", "the installed one is 0.0.1"),
        (f"__version__ = '{READABLE_SINCE}'\n", f"the installed {READABLE_SINCE} has no Auto classes"),
    ],
)
def test_trust_remote_code_names_the_package_and_version_it_needs(tmp_path, package, message):
    converted().save_pretrained(tmp_path / "model")
    path = [tmp_path / "fake"]
    (tmp_path / "fake" / "inplace_ttt").mkdir(parents=True)
    if package is None:  # an interpreter where the package cannot be imported (the venv installs it, so block it)
        block = "sys.modules['inplace_ttt'] = None"
    else:
        (tmp_path / "fake" / "inplace_ttt" / "__init__.py").write_text(package)
        block = ""
    run = fresh_python(
        f"""
        import sys
        {block}
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained(r"{tmp_path / "model"}", trust_remote_code=True)
        """,
        tmp_path,
        path,
    )
    assert run.returncode != 0
    expected = f"needs the inplace-ttt package, version {READABLE_SINCE} or newer (pip install 'inplace-ttt>={READABLE_SINCE}'); {message}"
    assert f"ImportError: this folder is an In-Place TTT checkpoint: loading it {expected}" in run.stderr, run.stderr[-2000:]


def test_the_folders_module_gives_the_auto_classes(tmp_path):
    converted().save_pretrained(tmp_path)
    spec = importlib.util.spec_from_file_location(REMOTE_MODULE, tmp_path / f"{REMOTE_MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from inplace_ttt.families.hf import InPlaceTTTConfig, InPlaceTTTForCausalLM

    assert module.InPlaceTTTConfig is InPlaceTTTConfig and module.InPlaceTTTForCausalLM is InPlaceTTTForCausalLM


def test_a_copy_saves_its_own_settings_and_a_non_main_rank_writes_nothing(tmp_path):
    import copy

    ids, mask = left_padded([13, 9], 13)
    model = converted()
    clipped = copy.deepcopy(model)
    inplace_ttt.set_clip_tau(clipped, 0.5)
    clipped.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["inplace_ttt"]["clip_tau"] == 0.5
    assert torch.equal(logits(inplace_ttt.from_pretrained(tmp_path / "copy"), ids, mask), logits(clipped, ids, mask))
    model.save_pretrained(tmp_path / "rank1", False)  # is_main_process, positional as transformers' signature has it
    assert not (tmp_path / "rank1").exists() or not any((tmp_path / "rank1").iterdir())


def test_push_to_hub_inside_save_pretrained_is_refused_before_anything_is_written(tmp_path):
    """transformers uploads inside its save_pretrained, before the folder is marked: the upload would be a plain model."""
    with pytest.raises(ValueError, match=r"save it, then call model.push_to_hub\(repo_id\)"):
        converted().save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/ttt")
    assert not (tmp_path / "out").exists()


def test_a_sharded_save_over_a_single_file_save_loads_as_the_new_model(tmp_path):
    """transformers leaves the earlier model.safetensors beside the new shards and reads it first."""
    ids, mask = left_padded([13, 9], 13)
    model = converted()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.json").is_file()
    from transformers import AutoModelForCausalLM

    for load in (inplace_ttt.from_pretrained, AutoModelForCausalLM.from_pretrained):
        assert torch.equal(logits(load(tmp_path), ids, mask), logits(model, ids, mask))
    model.save_pretrained(tmp_path)  # back to one file: transformers reads it first, the stale shards are never read
    assert torch.equal(logits(inplace_ttt.from_pretrained(tmp_path), ids, mask), logits(model, ids, mask))
