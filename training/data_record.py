"""What a model was trained on, recorded with it so evaluation can use the same (docs/model.md).

A training run computes the record once at start from the first good sample of each checked
training shard, keeps it in every checkpoint (``training_data``) and ``make export`` writes it
into the model folder's ``model.json`` ``source``. The keys (all optional for a reader: models
from elsewhere have none):

* ``camera_distance_range`` ``[lo, hi]``: the training views' relative radius (camera distance x
  tan(fov/2), MVDream's ``camera_distance_range`` with ``relative_radius: true``);
* ``fov_range``, ``elevation_range`` ``[lo, hi]`` (degrees) of the training quadruples;
* ``vae_latent``: ``mean`` (a latent cache stores the posterior mean) or ``sample`` (training on
  images draws from the posterior);
* ``reference_resolution``: the reference view was resized to this side (premultiplied,
  antialiased bilinear, ``models.shards.images.reference_on_white``) and composited on white
  before the image encoder;
* ``reference_dropout`` (stage 2): the fraction of steps trained without the reference frame.

The ranges are the ones the renderer drew the cameras from (``view_ranges`` in ``meta.json``),
or, for shards rendered before that was recorded, the range of the training views seen.
"""

from __future__ import annotations

from typing import Any

from models.cameras import relative_radius_of
from training.config import RunConfig

RANGES = {  # record key -> meta.json per-view list / view_ranges key
    "camera_distance_range": "relative_radius",
    "fov_range": "fov_deg",
    "elevation_range": "elevation_deg",
}


def _view_values(meta: dict, name: str) -> list[float]:
    """The per-view values of ``name`` over the training quadruples of one object's meta."""
    views = [i for quad in meta.get("quads", []) for i in quad]
    if name == "relative_radius" and "relative_radius" not in meta:
        fov = [meta["fov_deg"][i] for i in views]
        distance = [meta["distance"][i] for i in views]
        return [float(r) for r in relative_radius_of(fov, distance).tolist()]
    return [float(meta[name][i]) for i in views] if name in meta else []


def data_record(first_samples: list[dict], config: RunConfig) -> dict[str, Any]:
    """The record of a run (see the module docstring); ``first_samples``: what
    ``ShardDataModule.check`` returns (each with the sample's ``meta``)."""
    record: dict[str, Any] = {}
    for key, name in RANGES.items():
        low, high = [], []
        for sample in first_samples:
            meta = sample.get("meta") or {}
            drawn = (meta.get("view_ranges") or {}).get(name)
            values = [float(v) for v in drawn] if drawn else _view_values(meta, name)
            if values:
                low.append(min(values))
                high.append(max(values))
        if low:
            record[key] = [round(min(low), 4), round(max(high), 4)]
    record["vae_latent"] = "mean" if config.data.cached else "sample"
    record["reference_resolution"] = int(config.data.resolution)
    if config.stage == 2:
        record["reference_dropout"] = float(config.stage2.ref_dropout)
    return record
