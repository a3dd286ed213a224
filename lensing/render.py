"""Batched, differentiable torch rendering of host halos and subhalos on pixel grids.

The formulas are the ones of `lensing.profiles` (shared through `lensing.nfw_math`); this module only
arranges them over a batch: one host per map, any number of subhalos per map. It is used for fast
batch generation, for the PINN's physics loss, and for refinement at inference.

Speed without approximation: the squared elliptical radius is a quadratic form a x^2 + b xy + c y^2
over precomputed grid products; a host centred on the map satisfies kappa(-x, -y) = kappa(x, y) on the
exactly antisymmetric pixel grid, so only the first ceil(N/2) rows are evaluated and then mirrored (a
batch with off-centre hosts is evaluated on every pixel, at offsets from each host's centre); and maps
are processed in blocks that keep the temporaries in cache.
"""

from __future__ import annotations

import torch

from .grid import pixel_centres, q_from_ellipticity
from .nfw_math import cored_nfw_projected_sq, nfw_projected_sq, truncated_nfw_projected_sq

_BLOCK_PIXELS = 1 << 17  # pixels per block of maps / subhalos: large enough for two threads, fits in L2


def unit_grid(grid_size: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Pixel-centre grid (X, Y) of a field of view of 1, shape (N, N); multiply by fov_kpc for kpc."""
    centres = torch.as_tensor(pixel_centres(grid_size, 1.0), dtype=dtype, device=device)
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return x, y


def _block_size(pixels_per_item: int) -> int:
    return max(1, _BLOCK_PIXELS // pixels_per_item)


def _quadratic_form(ellipticity: torch.Tensor, phi_rad: torch.Tensor, r_s: torch.Tensor) -> torch.Tensor:
    """(B, 3) coefficients (a, b, c) with (xi / r_s)^2 = a x^2 + b xy + c y^2 (docs/design.md section 3)."""
    q = q_from_ellipticity(ellipticity)
    cos, sin = torch.cos(phi_rad), torch.sin(phi_rad)
    inv_r2 = 1.0 / r_s**2
    a = (q * cos**2 + sin**2 / q) * inv_r2
    b = 2.0 * sin * cos * (q - 1.0 / q) * inv_r2
    c = (q * sin**2 + cos**2 / q) * inv_r2
    return torch.stack([a, b, c], dim=1)


def render_hosts(
    kappa_s: torch.Tensor,
    r_s_over_fov: torch.Tensor,
    ellipticity: torch.Tensor,
    phi_rad: torch.Tensor,
    grid_size: int,
    core_fraction: torch.Tensor | None = None,
    center_x_over_fov: torch.Tensor | None = None,
    center_y_over_fov: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convergence maps (B, N, N) of NFW / elliptical NFW / cored hosts.

    All inputs have shape (B,). Radii and the host centres (offsets from the map centre; None: centred)
    are in units of the field of view, so one call serves maps of any fov; `core_fraction` (r_c / r_s,
    zero or None for a cusp) selects the cored profile per map.
    """
    dtype, device = kappa_s.dtype, kappa_s.device
    centres = torch.as_tensor(pixel_centres(grid_size, 1.0), dtype=dtype, device=device)
    off_centre = [c for c in (center_x_over_fov, center_y_over_fov) if c is not None and bool((c != 0).any())]
    form = _quadratic_form(ellipticity, phi_rad, r_s_over_fov)
    if off_centre:
        zero = torch.zeros_like(kappa_s)
        x0 = zero if center_x_over_fov is None else center_x_over_fov
        y0 = zero if center_y_over_fov is None else center_y_over_fov

        def squared_radius(block: slice) -> torch.Tensor:
            dx = centres[None, None, :] - x0[block, None, None]  # (b, 1, N)
            dy = centres[None, :, None] - y0[block, None, None]  # (b, N, 1)
            a, b, c = (form[block, k, None, None] for k in range(3))
            return (a * dx * dx + b * dx * dy + c * dy * dy).flatten(1)

        rows = grid_size
    else:
        top_rows = grid_size - grid_size // 2
        x, y = centres[None, :], centres[:top_rows, None]
        products = torch.stack(torch.broadcast_tensors(x * x, x * y, y * y)).reshape(3, -1)  # (3, rows * N)

        def squared_radius(block: slice) -> torch.Tensor:
            return form[block] @ products  # (b, rows * N)

        rows = top_rows
    cored = core_fraction > 0 if core_fraction is not None else torch.zeros_like(kappa_s, dtype=torch.bool)
    blocks = []
    step = _block_size(rows * grid_size)
    for start in range(0, kappa_s.shape[0], step):
        block = slice(start, start + step)
        x2 = squared_radius(block)
        shape = nfw_projected_sq(x2)
        if bool(cored[block].any()):
            assert core_fraction is not None  # some host is cored
            index = torch.nonzero(cored[block]).squeeze(1)
            b = core_fraction[block][index, None]
            shape = shape.index_copy(0, index, cored_nfw_projected_sq(x2[index], b))
        blocks.append(2.0 * kappa_s[block, None] * shape)
    top = torch.cat(blocks).reshape(-1, rows, grid_size)
    if off_centre:
        return top
    return torch.cat([top, top[:, : grid_size // 2].flip(-2, -1)], dim=1)


def add_subhalos(
    maps: torch.Tensor,
    map_index: torch.Tensor,
    x_over_fov: torch.Tensor,
    y_over_fov: torch.Tensor,
    kappa_s: torch.Tensor,
    r_s_over_fov: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    """Add truncated-NFW subhalos to `maps` (B, N, N); subhalo k lands on map `map_index[k]`.

    Positions and scale radii are in units of each map's field of view. Work is done in blocks of
    subhalos so that memory stays bounded for large batches.
    """
    if map_index.numel() == 0:
        return maps
    grid_size = maps.shape[-1]
    centres = torch.as_tensor(pixel_centres(grid_size, 1.0), dtype=maps.dtype, device=maps.device)
    flat = maps.reshape(maps.shape[0], -1).clone()
    step = _block_size(grid_size * grid_size)
    for start in range(0, map_index.numel(), step):
        block = slice(start, start + step)
        inv_r = 1.0 / r_s_over_fov[block, None, None]
        dx = (centres[None, None, :] - x_over_fov[block, None, None]) * inv_r  # (b, 1, N)
        dy = (centres[None, :, None] - y_over_fov[block, None, None]) * inv_r  # (b, N, 1)
        shape = truncated_nfw_projected_sq(dx * dx + dy * dy, tau[block, None, None])
        kappa = 2.0 * kappa_s[block, None, None] * shape
        flat.index_add_(0, map_index[block], kappa.reshape(kappa.shape[0], -1))
    return flat.reshape(maps.shape)
