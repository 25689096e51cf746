"""Memory per GPU of a training config (``make plan-memory CONFIG=... NODES=N GPUS=G``).

For the config's model (N trainable UNet parameters) and world size W = NODES x GPUS, bytes per
device of parameters, gradients, optimizer state and weight EMA under DDP and each ZeRO stage, the
frozen networks, and the activations of one object (its views + the stage-2 reference), so
that the largest batch per device fits ``--gpu-mem`` GB:

* DDP (fp32 weights, bf16 autocast): weights 4N, gradients 4N, AdamW moments 8N, EMA 4N.
* DeepSpeed bf16 (the GPU default): bf16 weights 2N (ZeRO-3: 2N/W), bf16 gradients 2N (ZeRO-2/3:
  2N/W), fp32 masters + moments 12N/W, the fp32 gradient partition the step casts to 4N/W,
  and the partitioned fp32 EMA 4N/W.

Activations per object are measured, not estimated: ``--measure`` runs one forward and backward
of the full-size UNet at the config's resolution, dtype and gradient checkpointing (on a GPU the
allocator's peak; on a CPU the process's resident high-water mark with the gradients allocated
beforehand), and ``--activations GB`` reuses a figure. Every figure is printed; ``--json`` also
writes them. For the config as given, the predicted peak of one process is printed too (on a CPU:
with the process's own baseline, the resident size of the imported libraries).

    python scripts/plan_memory.py --config configs/stage1-sd21-base.yaml --nodes 8 --gpus 8 \\
        --gpu-mem 80 --measure [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.bundle import build_model, load_model, read_model_meta  # noqa: E402
from training.config import RunConfig, load_config  # noqa: E402

GB = 1e9
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "zero2+offload", "zero3+offload")
BUCKET_ELEMENTS = 25_000_000  # training.strategy.deepspeed_config's reduce_bucket_size


def resident_bytes(field: str = "VmRSS") -> int:
    """This process's resident size (or high-water mark, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_resident() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def preset_of(config: RunConfig) -> str | dict:
    """The model preset (name, or the sections of a model folder) the config trains."""
    init = config.model.init
    if (Path(init) / "model.json").is_file():
        return read_model_meta(init)["preset"]
    return init if init in ("tiny", "sd21-base") else "sd21-base"


def model_numbers(config: RunConfig, preset) -> dict:
    """Parameter counts from a shapes-only build (no memory)."""
    name = preset if isinstance(preset, str) else None
    if name is None:  # a model folder's sections: write them for build_model
        path = Path(config.out) / ".plan_preset.yaml"
        import yaml

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(preset))
        name = str(path)
    model = build_model(name, device="meta")
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    return {
        "unet": count(model.unet),
        "vae": count(model.vae),
        "vae_decoder": count(model.vae.model.decoder) + count(model.vae.model.post_quant_conv),
        "image_encoder": count(model.image_encoder),
        "sample_size": int(model.unet.config.sample_size),
    }


def states(strategy: str, n: int, world: int, ema: bool) -> dict[str, float]:
    """Bytes per rank of weights, gradients, optimizer state, the fp32 gradient partition and
    the EMA, and which of them live in host memory (``host``: ZeRO-Offload)."""
    if strategy == "ddp":
        return {
            "params": 4 * n, "grads": 4 * n, "optimizer": 8 * n, "grad32": 0,
            "ema": 4 * n if ema else 0, "buckets": 0, "host": 0,
        }  # fmt: skip
    stage, offload = int(strategy[4]), strategy.endswith("offload")
    optimizer, grad32 = 12 * n / world, 4 * n / world  # fp32 masters + AdamW moments; fp32 grads
    return {
        "params": 2 * n / (world if stage == 3 else 1),
        # ZeRO-2/3 keep the reduced bf16 gradients of their partition; offload copies them to the
        # host's fp32 buffer bucket by bucket instead.
        "grads": 0 if offload else 2 * n / (world if stage >= 2 else 1),
        "optimizer": optimizer,
        "grad32": grad32,
        "ema": 4 * n / world if ema else 0,
        # overlap_comm: two fp32 reduce buckets (communication_data_type fp32)
        "buckets": 2 * BUCKET_ELEMENTS * 4,
        "host": optimizer + grad32 if offload else 0,
    }


def frozen_bytes(config: RunConfig, numbers: dict, bytes_per: int) -> float:
    if config.data.cached:  # no frozen weights stay (training.module.Frozen)
        return 0.0
    return (numbers["vae"] + numbers["image_encoder"]) * bytes_per


@torch.no_grad()
def _inputs(unet, frames: int, side: int, dtype, device):
    return (
        torch.randn(frames, unet.config.in_channels, side, side, dtype=dtype, device=device),
        torch.randint(0, 1000, (frames,), device=device),
        torch.randn(frames, 1, unet.config.cross_attention_dim, dtype=dtype, device=device),
        torch.randn(frames, 16, dtype=dtype, device=device),
    )


def measure_activations(config: RunConfig, init: str | None, numbers: dict) -> float:
    """Bytes of activations of one object's forward and backward, measured at full size."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = config.strategy.name == "deepspeed" or cuda or "bf16" in config.train.precision
    dtype = torch.bfloat16 if bf16 else torch.float32
    if init and (Path(init) / "model.json").is_file():
        unet = load_model(init, load_image_encoder=False).unet
    else:
        unet = build_model(preset_of(config), with_image_encoder=False).unet
    unet = unet.to(device=device, dtype=dtype).train()
    if config.model.grad_checkpointing:
        unet.enable_gradient_checkpointing()
    for p in unet.parameters():  # allocated up front: only activations grow below
        p.grad = torch.zeros_like(p)
    frames = 4 + (1 if config.stage == 2 else 0)
    side = config.data.resolution // 8
    x, t, context, cameras = _inputs(unet, frames, side, dtype, device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resident_bytes()
        reset_peak_resident()
    unet(x, t, context, cameras, num_views=frames).float().pow(2).mean().backward()
    if cuda:
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    return float(resident_bytes("VmHWM") - before)


def plan(
    config: RunConfig,
    world: int,
    gpu_mem_gb: float,
    activations: float,
    numbers: dict,
    baseline: float,
) -> dict:
    n = numbers["unet"]
    rows = {}
    for strategy in STRATEGIES:
        parts = states(strategy, n, world, config.ema.enabled)
        frozen = frozen_bytes(config, numbers, 4 if strategy == "ddp" else 2)
        device = sum(v for k, v in parts.items() if k != "host") - parts["host"] + frozen
        free = gpu_mem_gb * GB - device - 1.5 * GB  # CUDA context, allocator slack
        rows[strategy] = {
            **{k: v / GB for k, v in parts.items()},
            "frozen": frozen / GB,
            "device": device / GB,
            "max_batch": max(int(free // activations), 0) if activations > 0 else None,
        }
    # The config as given, all of it in one process's memory (a CPU run: device and host alike).
    key = "ddp"
    if config.strategy.name in ("deepspeed", "auto"):  # auto: DeepSpeed on GPUs
        key = f"zero{config.strategy.zero_stage}"
        key += "+offload" if config.strategy.offload_optimizer and key != "zero1" else ""
    parts = states(key, n, world, config.ema.enabled)
    predicted = baseline + sum(v for k, v in parts.items() if k != "host")
    predicted += frozen_bytes(config, numbers, 4 if key == "ddp" else 2)
    # Without offload the step's fp32 gradient partition and the backward's activations are
    # not alive at once: the peak is the larger of the two.
    transient = parts["grad32"] if not parts["host"] else 0.0
    predicted += max(activations * config.data.batch_size - transient, 0.0)
    return {
        "world_size": world,
        "trainable_params": n,
        "activations_per_object_gb": activations / GB,
        "gpu_mem_gb": gpu_mem_gb,
        "per_device_gb": rows,
        "config_strategy": key,
        "baseline_gb": baseline / GB,
        "predicted_peak_gb": predicted / GB,
    }


def table(result: dict) -> str:
    head = f"{'':<14}" + "".join(
        f"{k:>10}"
        for k in ("params", "grads", "optim", "ema", "frozen", "on device", "on host", "max batch")
    )
    lines = [
        f"{result['trainable_params'] / 1e6:.0f}M trainable parameters, world size "
        f"{result['world_size']}, activations {result['activations_per_object_gb']:.2f} GB "
        f"per object; GB per device ({result['gpu_mem_gb']:.0f} GB devices):",
        head,
    ]
    for name, row in result["per_device_gb"].items():
        optim = row["optimizer"] + row["grad32"]
        cells = [row["params"], row["grads"], optim, row["ema"], row["frozen"]]
        cells += [row["device"], row["host"]]
        batch = "-" if row["max_batch"] is None else str(row["max_batch"])
        lines.append(f"{name:<14}" + "".join(f"{c:>10.2f}" for c in cells) + f"{batch:>10}")
    lines.append(
        f"this config ({result['config_strategy']}, its batch, all in one process's memory): "
        f"predicted peak {result['predicted_peak_gb']:.2f} GB "
        f"(baseline {result['baseline_gb']:.2f} GB)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="a stage config (YAML) or a preset (sd21-base, tiny)"
    )
    parser.add_argument("--stage", type=int, default=1, choices=(1, 2), help="with a preset")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=1, help="devices per node")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GB per device")
    parser.add_argument("--measure", action="store_true", help="measure activations now")
    parser.add_argument("--activations", type=float, default=None, help="GB per object (known)")
    parser.add_argument("--init", default=None, help="model folder to measure with")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    args = parser.parse_args(argv)
    from training.launch import default_config

    config = load_config(default_config(args.stage, args.config), args.overrides)
    # The training process's libraries, imported before its baseline is read.
    import training.train  # noqa: F401

    if config.strategy.name == "deepspeed" and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed  # noqa: F401
    baseline = float(resident_bytes())
    numbers = model_numbers(config, preset_of(config))
    activations = (args.activations or 0.0) * GB
    if args.measure:
        activations = measure_activations(config, args.init, numbers)
    world = args.nodes * args.gpus
    result = plan(config, world, args.gpu_mem, activations, numbers, baseline)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
