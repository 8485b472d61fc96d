"""float32 master weights for trainable parameters held in a low precision (bf16 Moshi, say).

A bf16 parameter stepped in place loses every update below half its spacing: at lr 2e-6 every
step of a 0.02 weight (spacing 1.2e-4) and of a `W_target` diagonal near 1. So the optimizer
steps float32 copies, and each step writes them back to the parameters, as moshi-finetune's
mixed precision does. The Trainer keeps clipping and scheduling the parameters as usual: a hook
before the optimizer step hands the copies the (clipped) gradients, one after it writes back.
No library offers this for a plain `torch.optim` optimizer under transformers' `Trainer`
(Accelerate's mixed precision is autocast over float32 weights), hence this small module.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn

MASTER_WEIGHTS = "master_weights.safetensors"


class MasterWeights:
    """The float32 copies of a module's low-precision trainable parameters, by name."""

    def __init__(self, module: nn.Module):
        self.pairs = {name: (p, p.detach().float().clone()) for name, p in module.named_parameters() if p.requires_grad and p.dtype != torch.float32}
        self._by_param = {id(p): m for p, m in self.pairs.values()}

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def stepped(self, p: nn.Parameter) -> torch.Tensor:
        """What the optimizer steps for `p`: its float32 copy, or `p` itself."""
        return self._by_param.get(id(p), p)

    def seen_through(self, optimizer: torch.optim.Optimizer) -> SimpleNamespace:
        """`optimizer`'s parameter groups with each float32 copy replaced by its parameter (what
        the doctor asks: is every trainable parameter optimised?)."""
        params_of = {id(m): p for p, m in self.pairs.values()}
        groups = [{**g, "params": [params_of.get(id(q), q) for q in g["params"]]} for g in optimizer.param_groups]
        return SimpleNamespace(param_groups=groups)

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        optimizer.register_step_pre_hook(self._gradients_in)
        optimizer.register_step_post_hook(self._weights_out)
        return optimizer

    def _gradients_in(self, optimizer, args, kwargs) -> None:
        for p, master in self.pairs.values():
            master.grad = None if p.grad is None else p.grad.to(torch.float32)

    @torch.no_grad()
    def _weights_out(self, optimizer, args, kwargs) -> None:
        for p, master in self.pairs.values():
            p.copy_(master)

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({name: m.contiguous() for name, (_, m) in self.pairs.items()}, str(Path(directory) / MASTER_WEIGHTS))

    @torch.no_grad()
    def load(self, directory: str | Path) -> None:
        """Take the copies saved with a checkpoint; without a file (a checkpoint of a run in
        float32), start them from the parameters as loaded."""
        path = Path(directory) / MASTER_WEIGHTS
        saved = {}
        if path.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(path))
        for name, (p, master) in self.pairs.items():
            master.copy_(saved[name] if name in saved else p.float())
