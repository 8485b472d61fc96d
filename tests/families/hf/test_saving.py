"""A saved folder is marked so that plain transformers refuses it rather than drop the fast weights."""

import json

import pytest
from transformers import AutoModelForCausalLM

from tests.tiny_hf import converted


def test_plain_transformers_refuses_the_checkpoint(tmp_path):
    converted().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "inplace_ttt"
    with pytest.raises(ValueError, match="inplace_ttt"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
