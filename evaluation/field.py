"""The 3D field optimised by SDS: a multi-resolution hash grid + two small MLPs, in plain PyTorch.

Density ``sigma(x) = softplus(mlp_d(enc(x)) + blob(x))`` with the Magic3D blob bias (a dense ball
at start-up so SDS has something to shape), albedo ``sigmoid(mlp_c(enc(x)))``. Normals are the
normalised negative density gradient: analytic by default (the released recipe), computed in closed
form alongside the forward pass (hash-grid weight derivatives carried through the MLP); central
finite differences as an option. Points are in world units inside the cube ``[-radius, radius]^3``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Instant-NGP's spatial hash primes (the first is 1 so that x stays coherent in memory).
_PRIMES = (1, 2654435761, 805459861)


class HashGrid(nn.Module):
    """Multi-resolution grid encoding, all levels in one vectorised gather.

    Coarse levels whose ``(res + 1)^3`` vertices fit the table are indexed densely (no collisions);
    fine levels use the spatial hash. Trilinear interpolation makes it differentiable in both the
    table entries and the input points (second order for analytic normals).
    """

    def __init__(
        self,
        levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        init_std: float = 1e-4,
    ):
        super().__init__()
        resolutions = [int(base_resolution * per_level_scale**level) for level in range(levels)]
        max_size = 2**log2_hashmap_size
        sizes = [min((res + 1) ** 3, max_size) for res in resolutions]
        dense = [(res + 1) ** 3 <= max_size for res in resolutions]
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.levels, self.features_per_level = levels, features_per_level
        self.output_dim = levels * features_per_level
        self.register_buffer("resolution", torch.tensor(resolutions, dtype=torch.long), False)
        self.register_buffer("dense", torch.tensor(dense), False)
        self.num_dense = sum(dense)  # the first num_dense levels are dense
        # int32 views of the primes (wrapped to two's complement) and per-level dense strides
        primes32 = [p - 2**32 if p >= 2**31 else p for p in _PRIMES]
        self.register_buffer("primes32", torch.tensor(primes32, dtype=torch.int32), False)
        strides = [[1, res + 1, (res + 1) ** 2] for res in resolutions]
        self.register_buffer("dense_mul", torch.tensor(strides, dtype=torch.int32), False)
        self.register_buffer("mask", torch.tensor([s - 1 for s in sizes], dtype=torch.int32), False)
        self.register_buffer("offset32", torch.tensor(offsets[:-1], dtype=torch.int32), False)
        self.register_buffer("step", torch.tensor([0, 1], dtype=torch.int32), False)
        # Instant-NGP initialises the table uniformly in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(offsets[-1], features_per_level))
        nn.init.uniform_(self.table, -init_std, init_std)

    def forward(self, x01: torch.Tensor, with_grad: bool = False):
        """``x01`` ``[N, 3]`` in ``[0, 1]`` -> features ``[N, levels * features_per_level]``;
        with ``with_grad`` also their spatial Jacobian ``[N, 3, levels * features_per_level]``
        (d features / d x01, from the derivative of the trilinear weights: exact, and itself
        differentiable in the table, so analytic normals cost no double backward)."""
        res = self.resolution.to(x01.dtype)  # [L]
        pos = x01.clamp(0.0, 1.0)[:, None, :] * res[None, :, None]  # [N, L, 3]
        base = pos.detach().floor().clamp_max(res[None, :, None] - 1)
        frac = pos - base
        # Per axis, the two vertex coordinates (base, base + 1) already multiplied by the axis'
        # stride (dense levels) or prime (hashed levels); the 8 corners are then one broadcast
        # add / xor of the three axes. int32 arithmetic wraps like tiny-cuda-nn's uint32 hash,
        # and the low bits that the power-of-two mask keeps are the same.
        coord = base.to(torch.int32)[..., None] + self.step[None, None, None]  # [N, L, 3, 2]
        # Dense levels are the coarse ones (resolution grows with the level), so each kind is
        # computed only on its own levels and the two are concatenated in level order.
        parts = []
        if self.num_dense:
            dense = coord[:, : self.num_dense] * self.dense_mul[None, : self.num_dense, :, None]
            index = dense[:, :, 0, :, None, None] + dense[:, :, 1, None, :, None]
            parts.append(index + dense[:, :, 2, None, None, :])
        if self.num_dense < self.levels:
            hashed = coord[:, self.num_dense :] * self.primes32[None, None, :, None]
            index = hashed[:, :, 0, :, None, None] ^ hashed[:, :, 1, None, :, None]
            mask = self.mask[None, self.num_dense :, None, None, None]
            parts.append((index ^ hashed[:, :, 2, None, None, :]) & mask)
        index = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        index = (index + self.offset32.view(1, -1, 1, 1, 1)).flatten(2).long()  # [N, L, 8]
        feats = self.table[index]  # [N, L, 8, F]
        w = torch.stack([1 - frac, frac], dim=-1)  # [N, L, 3, 2]
        wx, wy, wz = w[:, :, 0, :, None, None], w[:, :, 1, None, :, None], w[:, :, 2, None, None, :]
        weights = (wx * wy * wz).flatten(2)  # [N, L, 8]
        if torch.compiler.is_compiling():
            # Written as 8 explicit terms: inductor's CPU code otherwise splits this 8-long
            # reduction across threads per output element (orders of magnitude slower).
            out = sum(feats[:, :, c] * weights[:, :, c, None] for c in range(8)).flatten(1)
        else:
            out = (feats * weights[..., None]).sum(2).flatten(1)
        if not with_grad:
            return out
        sign = torch.tensor([-1.0, 1.0], dtype=x01.dtype, device=x01.device)
        dx, dy, dz = sign[:, None, None], sign[None, :, None], sign[None, None, :]
        dweights = torch.stack(  # d weights / d frac per axis: [N, L, 3, 8]
            [(dx * wy * wz).flatten(2), (wx * dy * wz).flatten(2), (wx * wy * dz).flatten(2)], 2
        )
        inside = ((x01 > 0) & (x01 < 1)).to(x01.dtype)  # the clamp has no gradient outside
        if torch.compiler.is_compiling():  # explicit terms, as above
            jac = sum(feats[:, :, None, c] * dweights[:, :, :, c, None] for c in range(8))
            jac = jac.transpose(1, 2) * res[None, None, :, None]  # [N, 3, L, F]
        else:
            jac = torch.einsum("nlcf,nlac->nalf", feats, dweights) * res[None, None, :, None]
        return out, (jac.flatten(2) * inside[:, :, None])


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden`` (no biases, as tiny-cuda-nn's FullyFused)."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*mods)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softplus": F.softplus,
    "exp": lambda x: torch.exp(x.clamp_max(15.0)),  # clamp keeps the backward finite
    "relu": F.relu,
}
# d activation / d input, for the closed-form density gradient (analytic normals)
_DERIVATIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softplus": torch.sigmoid,
    "exp": lambda x: torch.exp(x.clamp_max(15.0)),
    "relu": lambda x: (x > 0).to(x.dtype),
}


def _mlp_with_jacobian(
    net: nn.Sequential, h: torch.Tensor, jac: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of a bias-free ReLU MLP with the forward-mode Jacobian ``jac`` ``[N, 3, D]``
    carried along (three tangents, one per world axis)."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            h, jac = layer(h), jac @ layer.weight.T.to(jac.dtype)
        else:  # ReLU
            jac = jac * (h > 0).to(jac.dtype)[:, None, :]
            h = F.relu(h)
    return h, jac


class Field(nn.Module):
    """Density + albedo field; ``density`` is all the renderer needs for alpha and skipping."""

    def __init__(self, cfg) -> None:  # cfg: the ``field`` section of the eval config
        super().__init__()
        if cfg.density_activation not in _ACTIVATIONS:
            raise ValueError(
                f"config key 'field.density_activation': {cfg.density_activation!r} is not one "
                f"of {sorted(_ACTIVATIONS)}"
            )
        if cfg.normal not in ("analytic", "finite_difference"):
            raise ValueError(
                f"config key 'field.normal': {cfg.normal!r} is not analytic or finite_difference"
            )
        grid = cfg.grid
        self.encoding = HashGrid(
            grid.levels,
            grid.features_per_level,
            grid.log2_hashmap_size,
            grid.base_resolution,
            grid.per_level_scale,
            grid.init_std,
        )
        dim = self.encoding.output_dim
        self.density_net = mlp(dim, cfg.mlp.hidden, cfg.mlp.density_layers, 1)
        self.feature_net = mlp(dim, cfg.mlp.hidden, cfg.mlp.color_layers, 3)
        self.radius = float(cfg.radius)
        self.blob_scale, self.blob_std = float(cfg.blob_scale), float(cfg.blob_std)
        self.activation = _ACTIVATIONS[cfg.density_activation]
        self.derivative = _DERIVATIVES[cfg.density_activation]
        self.normal_mode, self.normal_eps = cfg.normal, float(cfg.normal_eps)
        self.geometry: nn.ModuleDict | None = None  # the frozen shape (``freeze_geometry``)

    def freeze_geometry(self) -> None:
        """Fix the shape from now on (a texture stage): density and normals come from a frozen
        copy of the grid and density MLP, while the albedo keeps learning on the live grid. The
        grid is shared, so without the copy the albedo's updates would move the surface too."""
        if self.geometry is None:
            frozen = {"encoding": self.encoding, "density_net": self.density_net}
            self.geometry = nn.ModuleDict(copy.deepcopy(frozen)).requires_grad_(False)

    def _shape(self) -> tuple[HashGrid, nn.Sequential]:
        """The grid and density MLP the density is read from (the frozen copy once fixed)."""
        if self.geometry is None:
            return self.encoding, self.density_net
        return self.geometry["encoding"], self.geometry["density_net"]

    def param_groups(self, lr_grid: float, lr_mlp: float) -> list[dict]:
        """The recipe's two learning rates: the grid table learns 10x faster than the MLPs."""
        mlps = list(self.density_net.parameters()) + list(self.feature_net.parameters())
        return [
            {"params": [self.encoding.table], "lr": lr_grid, "name": "encoding"},
            {"params": mlps, "lr": lr_mlp, "name": "mlps"},
        ]

    def _encode(self, x: torch.Tensor, encoding: HashGrid | None = None) -> torch.Tensor:
        return (self.encoding if encoding is None else encoding)((x / self.radius + 1.0) * 0.5)

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        """Magic3D's density bias: positive inside a ball of radius ``blob_std``."""
        return self.blob_scale * (1.0 - x.norm(dim=-1) / self.blob_std)

    def density(self, x: torch.Tensor, enc: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, 3]`` world points -> density ``[N]`` (``enc``: their live-grid features, reused
        while the shape is not frozen)."""
        encoding, density_net = self._shape()
        if enc is None or self.geometry is not None:
            enc = self._encode(x, encoding)
        return self.activation(density_net(enc)[:, 0] + self.blob(x))

    def _analytic(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Density, albedo and ``grad(sigma)`` in closed form (the exact gradient autograd would
        give, as the reference's ``normal_type: analytic``, without a double backward)."""
        encoding, density_net = self._shape()
        enc, jac = encoding((x / self.radius + 1.0) * 0.5, with_grad=True)
        jac = jac * (0.5 / self.radius)  # d x01 / d x
        raw, raw_jac = _mlp_with_jacobian(density_net, enc, jac)
        norm = x.norm(dim=-1, keepdim=True)
        blob_grad = -(self.blob_scale / self.blob_std) * x / norm.clamp_min(1e-8)
        pre = raw[:, 0] + self.blob(x)
        grad = self.derivative(pre)[:, None] * (raw_jac[:, :, 0] + blob_grad)
        return {
            "density": self.activation(pre),
            "albedo": self.albedo(x, enc if self.geometry is None else None),
            "grad": grad,
        }

    def albedo(self, x: torch.Tensor, enc: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, 3]`` world points -> albedo in [0, 1] from the live grid (``enc``: its features
        when already computed)."""
        return torch.sigmoid(self.feature_net(self._encode(x) if enc is None else enc))

    def normals(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Outward unit normals ``-grad(sigma) / |grad(sigma)|``, ``[N, 3]``."""
        if self.normal_mode == "analytic":
            grad = self._analytic(x)["grad"]
        else:
            eps = self.normal_eps
            offsets = torch.eye(3, dtype=x.dtype, device=x.device) * eps
            probe = torch.cat([x[:, None] + offsets, x[:, None] - offsets], dim=1)  # [N, 6, 3]
            dens = self.density(probe.reshape(-1, 3)).reshape(-1, 6)
            grad = (dens[:, :3] - dens[:, 3:]) / (2 * eps)
        return -F.normalize(grad, dim=-1, eps=1e-8)

    def forward(self, x: torch.Tensor, with_normals: bool = False) -> dict[str, torch.Tensor]:
        if with_normals and self.normal_mode == "analytic":
            out = self._analytic(x)
            out["normal"] = -F.normalize(out.pop("grad"), dim=-1, eps=1e-8)
            return out
        enc = self._encode(x)
        out = {"density": self.density(x, enc), "albedo": self.albedo(x, enc)}
        if with_normals:
            out["normal"] = self.normals(x)
        return out


def shade(
    albedo: torch.Tensor,
    normal: torch.Tensor | None,
    points: torch.Tensor,
    light_position: torch.Tensor | None,
    mode: str,
    ambient: float,
) -> torch.Tensor:
    """Per-sample colour: ``albedo`` as is, or Lambertian ``albedo * (ambient + diffuse * n.l)``
    with a point light (``textureless`` uses a white albedo so only geometry is judged)."""
    if mode == "albedo":
        return albedo
    if normal is None or light_position is None:
        raise ValueError(f"shading mode {mode!r} needs normals and a light position")
    light_dir = F.normalize(light_position - points, dim=-1)
    lambert = (normal * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    base = torch.ones_like(albedo) if mode == "textureless" else albedo
    if mode not in ("diffuse", "textureless"):
        raise ValueError(f"unknown shading mode {mode!r} (albedo, diffuse, textureless)")
    return base * (ambient + (1.0 - ambient) * lambert)
