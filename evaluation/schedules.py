"""SDS schedules as fractions of ``sds.steps``: one recipe for any run length.

Each schedule key (``SCHEDULE_KEYS``) holds a fraction of ``sds.steps`` (a value below 1) or an
absolute step count (1 or more). Fractions scale with ``--steps``: the released recipe's 8000-step
timestep annealing of a 10,000-step run is ``0.8``, and a 600-step run anneals over 480 steps.
An absolute count that a run never reaches (a schedule that never completes, a resolution phase
or shading that never starts) is named by :func:`schedule_warnings`.
"""

from __future__ import annotations

SCHEDULE_KEYS = {  # key -> what happens when an absolute count exceeds sds.steps
    "sds.t_anneal_steps": "the timestep annealing never completes",
    "sds.guidance_anneal_start": "the guidance annealing never starts",
    "sds.guidance_anneal_steps": "the guidance annealing never completes",
    "sds.orient_ramp_steps": "the orientation-loss ramp never completes",
    "sds.milestones": "a resolution phase never starts",
    "material.ambient_only_steps": "shading never starts (albedo only: shading never shapes the geometry)",
    "material.albedo_finish_steps": "the albedo-only finish covers the whole run (shading never starts)",
    "optim.decay_start": "the learning rate never decays",
}


def at_step(value: float, total: int) -> int:
    """A schedule value as a step: a fraction (< 1) of ``total`` or an absolute count (>= 1)."""
    return int(round(float(value) * total)) if float(value) < 1.0 else int(value)


def albedo_finish_start(material_cfg, total: int) -> int | None:
    """The first step of the albedo-only finish (``material.albedo_finish_steps``), or None
    when there is none (0), whatever the step."""
    finish = at_step(material_cfg.albedo_finish_steps, total)
    return total - finish if finish > 0 else None


def lr_factor(optim_cfg, step: int, total: int) -> float:
    """The learning-rate multiplier at ``step``: 1 until ``optim.decay_start`` (null: always 1,
    the recipe's constant rate), then linear down to ``optim.decay_to`` at the last step."""
    start = optim_cfg.get("decay_start")
    if start is None:
        return 1.0
    first = at_step(start, total)
    if step <= first:
        return 1.0
    end = float(optim_cfg.get("decay_to", 0.1))
    return 1.0 + (end - 1.0) * min((step - first) / max(total - 1 - first, 1), 1.0)


def annealed_fraction(step: int, start: float, end: float, anneal_steps: int) -> float:
    """Linear interpolation from ``start`` at step 0 to ``end`` at ``anneal_steps``, then flat."""
    ramp = min(max(step / max(anneal_steps, 1), 0.0), 1.0)
    return start + (end - start) * ramp


def _values(cfg, key: str) -> list[float]:
    section, name = key.split(".")
    value = cfg[section].get(name)
    if value is None:  # an optional schedule that is off
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def schedule_warnings(cfg) -> list[str]:
    """One line per schedule key whose absolute step count exceeds ``sds.steps``, and one when
    the shading warm-up and the albedo finish leave no shaded step."""
    total = int(cfg.sds.steps)
    out = []
    for key, effect in SCHEDULE_KEYS.items():
        late = [v for v in _values(cfg, key) if at_step(v, total) > total]
        if late and not (key.startswith("material.") and cfg.material.mode == "albedo"):
            shown = ", ".join(f"{v:g}" for v in late)
            out.append(
                f"config key {key!r} = {shown} steps exceeds sds.steps = {total}: {effect}; "
                f"give a fraction of sds.steps (a value below 1) instead"
            )
    mat = cfg.material
    finish = albedo_finish_start(mat, total)
    if (
        mat.mode == "diffuse"
        and finish is not None
        and 0 <= finish <= at_step(mat.ambient_only_steps, total)
    ):
        out.append(
            f"config keys 'material.ambient_only_steps' and 'material.albedo_finish_steps' leave "
            f"no shaded step: the warm-up reaches the finish (step {finish} of {total})"
        )
    return out
