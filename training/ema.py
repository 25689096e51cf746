"""fp32 exponential moving average of the UNet weights, kept outside the DeepSpeed engine.

DeepSpeed casts the wrapped module (buffers included, up to 0.19.1) to bf16, and Lightning's own
WeightAveraging copies the whole LightningModule (frozen VAE and CLIP too) into a state the
DeepSpeed strategy never saves. This EMA holds plain fp32 tensors for the trainable UNet weights only;
the module puts them into the checkpoint dict, which both DDP and DeepSpeed (client state) save.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def _gathered(params: list[nn.Parameter]):
    """Under ZeRO-3 each rank holds a slice of every parameter: gather for the update."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class WeightEMA:
    def __init__(self, module: nn.Module, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        with _gathered([params[n] for n in self.names]):
            self.shadow = {n: params[n].detach().float().clone() for n in self.names}
        self.updates = 0

    def decay_at(self, step: int) -> float:
        # Warm-up of the decay so an early EMA is not dominated by the initial weights.
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        params = dict(module.named_parameters())
        live = [params[n] for n in self.names]
        with _gathered(live):
            if step < self.start_step:  # before the start, the EMA just tracks the weights
                for name, param in zip(self.names, live):
                    self.shadow[name].copy_(param.detach())
                return
            shadow = [self.shadow[n] for n in self.names]
            if shadow[0].device != live[0].device:
                self.to(live[0].device)
                shadow = [self.shadow[n] for n in self.names]
            weight = 1.0 - self.decay_at(step)
            torch._foreach_lerp_(shadow, [p.detach().float() for p in live], weight)
        self.updates += 1

    def to(self, device: torch.device | str) -> WeightEMA:
        self.shadow = {n: t.to(device) for n, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "shadow": {n: t.detach().cpu() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise KeyError(
                f"weight EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}"
            )
        device = next(iter(self.shadow.values())).device
        self.shadow = {n: state["shadow"][n].float().to(device) for n in self.names}
        self.updates = int(state.get("updates", 0))
