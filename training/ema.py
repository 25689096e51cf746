"""fp32 exponential moving average of the UNet weights, kept outside the DeepSpeed engine.

DeepSpeed casts the wrapped module (buffers included, up to 0.19.1) to bf16, and Lightning's own
WeightAveraging copies the whole LightningModule (frozen VAE and CLIP too) into a state the
DeepSpeed strategy never saves.

* DDP / single process (:class:`WeightEMA`): plain fp32 tensors for the trainable UNet weights, put
  into the checkpoint dict.
* DeepSpeed ZeRO-1/2/3 (:class:`PartitionedWeightEMA`): each rank keeps the EMA of its own fp32
  master partition only (the flat tensors DeepSpeed's ZeRO optimizer steps, 1/world of the model),
  updated in place with no copy, no communication and no gather; saved per rank beside
  DeepSpeed's shards and merged at export by DeepSpeed's own shard merger
  (training.checkpoint_read).
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


def decay_at(decay: float, step: int) -> float:
    # Warm-up of the decay so an early EMA is not dominated by the initial weights.
    return min(decay, (1 + step) / (10 + step))


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
        return decay_at(self.decay, step)

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


# Where DeepSpeed's optimizers keep this rank's flat fp32 master partition (one tensor per group or
# sub-group): ZeRO-1/2, the bf16 optimizer (ZeRO-0/1), ZeRO-3. Each is what the optimizer's own
# state dict saves (ZeRO-1/2 without its alignment padding), so the merger can read the EMA alike.
_MASTER_ATTRIBUTES = (
    "single_partition_of_fp32_groups",
    "fp32_groups_flat_partition",
    "fp32_partitioned_groups_flat",
)


def fp32_partition(optimizer) -> list[torch.Tensor]:
    """This rank's fp32 master partition in a DeepSpeed ZeRO optimizer."""
    for name in _MASTER_ATTRIBUTES:
        groups = getattr(optimizer, name, None)
        if groups:
            if any(t.numel() == 0 for t in groups):  # ZeRO-3 NVMe offload swaps them out
                raise NotImplementedError("weight EMA: fp32 masters swapped out (NVMe offload)")
            return list(groups)
    raise TypeError(
        f"weight EMA: {type(optimizer).__name__} is not a DeepSpeed ZeRO optimizer "
        f"(no {' / '.join(_MASTER_ATTRIBUTES)})"
    )


def _unpadded(optimizer, groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """The groups as the optimizer's state dict saves them (ZeRO-1/2 drops the alignment tail)."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if isinstance(optimizer, DeepSpeedZeroOptimizer):
        return optimizer._get_groups_without_padding(groups)
    return groups


class PartitionedWeightEMA:
    """Under DeepSpeed ZeRO: the fp32 EMA of this rank's own fp32 master partition (not of the
    bf16-rounded module weights), one tensor per optimizer group of the same size, bound to the
    optimizer on first use (after DeepSpeed has built it)."""

    partitioned = True

    def __init__(self, decay: float, start_step: int = 0) -> None:
        self.decay = decay
        self.start_step = start_step
        self.shadow: list[torch.Tensor] | None = None
        self.updates = 0

    def decay_at(self, step: int) -> float:
        return decay_at(self.decay, step)

    @torch.no_grad()
    def bind(self, optimizer) -> list[torch.Tensor]:
        masters = [m.detach() for m in fp32_partition(optimizer)]
        if self.shadow is None:
            self.shadow = [m.clone() for m in masters]
        return masters

    def numel(self) -> int:
        return sum(t.numel() for t in self.shadow or [])

    @torch.no_grad()
    def update(self, optimizer, step: int) -> None:
        masters = self.bind(optimizer)
        if step < self.start_step:  # before the start, the EMA just tracks the weights
            torch._foreach_copy_(self.shadow, masters)
            return
        torch._foreach_lerp_(self.shadow, masters, 1.0 - self.decay_at(step))
        self.updates += 1

    def state_dict(self) -> dict:
        """For the checkpoint dict (rank 0's client state): the counters; the tensors go to the
        per-rank shard (:meth:`shard_state`)."""
        return {"decay": self.decay, "updates": self.updates, "partitioned": True}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("updates", 0))

    def shard_state(self, optimizer) -> dict:
        self.bind(optimizer)
        return {"groups": [t.detach().cpu().clone() for t in _unpadded(optimizer, self.shadow)]}

    @torch.no_grad()
    def load_shard(self, optimizer, state: dict, source: str) -> None:
        self.bind(optimizer)
        groups = state["groups"]
        wanted = [t.numel() for t in _unpadded(optimizer, self.shadow)]
        if [t.numel() for t in groups] != wanted:
            raise ValueError(
                f"{source}: weight EMA partition sizes {[t.numel() for t in groups]} do not match "
                f"this rank's optimizer partition {wanted} (same world size and ZeRO stage needed)"
            )
        for target, saved in zip(self.shadow, groups):
            target.view(-1)[: saved.numel()].copy_(saved.view(-1))
