"""What a training mode leaves for the ecosystem's loaders: a `lora` run's final/ is the trained
model with its LoRA merged, a complete folder `AutoModelForCausalLM` reads."""

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

import inplace_ttt
from inplace_ttt.train.modes import is_peft
from inplace_ttt.train.run import family, load_run_config
from inplace_ttt.train.trainer import run_training
from tests.tiny_hf import left_padded, logits
from tests.train.conftest import edit


@pytest.mark.integration
def test_a_lora_runs_final_folder_is_the_trained_model_merged(workspace):
    edit(workspace["config"], train={"mode": "lora", "max_steps": 3, "save_steps": 100}, lora={"r": 2, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    ids, mask = left_padded([30, 17], 30)
    trained = {}

    class Trained(TrainerCallback):
        """The trained model as the run holds it, LoRA apart from its base weights (before final/ merges it)."""

        def on_train_end(self, args, state, control, model=None, **kwargs):
            assert is_peft(model)
            assert model.peft_config["default"].task_type == "CAUSAL_LM"  # else AutoPeftModelForCausalLM loads the adapters' base without its TTT layers
            model.eval()
            trained["logits"] = logits(model, ids, mask)
            trained["q_proj"] = model.base_model.model.model.layers[1].self_attn.q_proj.base_layer.weight.detach().clone()

    transformers_runs = family("transformers")
    final = run_training(transformers_runs.settle(load_run_config(workspace["config"])), transformers_runs.prepare, callbacks=[Trained()])
    assert not list(final.glob("adapter_*"))  # a whole model, not an adapter
    loaded = AutoModelForCausalLM.from_pretrained(final)
    assert [i for i, _ in inplace_ttt.ttt_layers(loaded)] == [0, 2]
    assert not torch.equal(loaded.model.layers[1].self_attn.q_proj.weight, trained["q_proj"])  # the LoRA moved and is folded in
    # merging adds B A (alpha / r) into W in float32: the same sums rounded in another order (measured: 1.2e-7, one ulp)
    torch.testing.assert_close(logits(loaded, ids, mask)[mask.bool()], trained["logits"][mask.bool()], rtol=0, atol=1e-6)
