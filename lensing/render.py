"""Batched, differentiable torch rendering of host halos and subhalos on pixel grids.

The formulas are the ones of `lensing.profiles` (shared through `lensing.nfw_math`); this module only
arranges them over a batch: one host per map, any number of subhalos per map. It is used for fast
batch generation, for the PINN's physics loss, and for refinement at inference.
"""

from __future__ import annotations

import torch

from .grid import elliptical_radius, pixel_centres, q_from_ellipticity
from .nfw_math import cored_nfw_projected, nfw_projected, truncated_nfw_projected


def unit_grid(grid_size: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Pixel-centre grid (X, Y) of a field of view of 1, shape (N, N); multiply by fov_kpc for kpc."""
    centres = torch.as_tensor(pixel_centres(grid_size, 1.0), dtype=dtype, device=device)
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return x, y


def render_hosts(
    kappa_s: torch.Tensor,
    r_s_over_fov: torch.Tensor,
    ellipticity: torch.Tensor,
    phi_rad: torch.Tensor,
    grid_size: int,
    core_fraction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convergence maps (B, N, N) of NFW / elliptical NFW / cored hosts centred on each map.

    All inputs have shape (B,). Radii are in units of the field of view, so one call serves maps of
    any fov; `core_fraction` (r_c / r_s, zero or None for a cusp) selects the cored profile per map.
    """
    x, y = unit_grid(grid_size, kappa_s.dtype, kappa_s.device)
    q = q_from_ellipticity(ellipticity)[:, None, None]
    xi = elliptical_radius(x, y, q, phi_rad[:, None, None])
    scaled = xi / r_s_over_fov[:, None, None]
    shape = nfw_projected(scaled)
    if core_fraction is not None:
        cored = core_fraction > 0
        if bool(cored.any()):
            b = torch.where(cored, core_fraction, torch.full_like(core_fraction, 0.5))[:, None, None]
            shape = torch.where(cored[:, None, None], cored_nfw_projected(scaled, b), shape)
    return 2.0 * kappa_s[:, None, None] * shape


def add_subhalos(
    maps: torch.Tensor,
    map_index: torch.Tensor,
    x_over_fov: torch.Tensor,
    y_over_fov: torch.Tensor,
    kappa_s: torch.Tensor,
    r_s_over_fov: torch.Tensor,
    tau: torch.Tensor,
    chunk: int = 4096,
) -> torch.Tensor:
    """Add truncated-NFW subhalos to `maps` (B, N, N); subhalo k lands on map `map_index[k]`.

    Positions and scale radii are in units of each map's field of view. Work is done in chunks of
    subhalos so that memory stays bounded for large batches.
    """
    if map_index.numel() == 0:
        return maps
    grid_size = maps.shape[-1]
    x, y = unit_grid(grid_size, maps.dtype, maps.device)
    flat = maps.reshape(maps.shape[0], -1)
    for start in range(0, map_index.numel(), chunk):
        sl = slice(start, start + chunk)
        dx = x - x_over_fov[sl, None, None]
        dy = y - y_over_fov[sl, None, None]
        radius = torch.sqrt(dx**2 + dy**2) / r_s_over_fov[sl, None, None]
        kappa = 2.0 * kappa_s[sl, None, None] * truncated_nfw_projected(radius, tau[sl, None, None])
        flat = flat.index_add(0, map_index[sl], kappa.reshape(kappa.shape[0], -1))
    return flat.reshape(maps.shape)
