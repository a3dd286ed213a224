"""Pixel grids and the elliptical radius (docs/design.md, "Physics conventions": the grid)."""

from __future__ import annotations

import numpy as np

from .limits import FOV, InputError
from .nfw_math import namespace

DEFAULT_FOV_KPC = 1000.0  # side of the square field of view, physical kpc


def check_fov(fov_kpc: float) -> float:
    """`fov_kpc` as a float, or an InputError naming it when it is not finite or outside `limits.FOV`."""
    return FOV.check("fov_kpc", fov_kpc)


def pixel_centres(grid_size: int, fov_kpc: float = DEFAULT_FOV_KPC) -> np.ndarray:
    """1-D pixel-centre coordinates (kpc): (i - (N-1)/2) * fov / N."""
    if int(grid_size) != grid_size or grid_size < 1:
        raise InputError("grid_size", f"grid_size must be a positive integer, got {grid_size!r}")
    fov_kpc = check_fov(fov_kpc)
    n = int(grid_size)
    return (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * (fov_kpc / n)


def pixel_grid(grid_size: int, fov_kpc: float = DEFAULT_FOV_KPC) -> tuple[np.ndarray, np.ndarray]:
    """Square grid (X, Y) in kpc; map[i][j] lies at (X[i][j], Y[i][j]), X along j, Y along i."""
    centres = pixel_centres(grid_size, fov_kpc)
    return np.meshgrid(centres, centres, indexing="xy")


def q_from_ellipticity(e):
    """Axis ratio q = (1 - e) / (1 + e)."""
    return (1 - e) / (1 + e)


def elliptical_radius(x, y, q, phi_rad):
    """xi = sqrt(q x'^2 + y'^2 / q) in the frame rotated by the position angle phi (radians, CCW from +x).

    Works for numpy arrays and torch tensors; q and phi broadcast against x and y.
    """
    xp = namespace(x)
    cos_phi, sin_phi = xp.cos(phi_rad), xp.sin(phi_rad)
    x_rot = x * cos_phi + y * sin_phi
    y_rot = -x * sin_phi + y * cos_phi
    return xp.sqrt(q * x_rot**2 + y_rot**2 / q)


def elliptical_radius_components(x, y, e1, e2):
    """xi for ellipticity components e1 = e cos 2 phi, e2 = e sin 2 phi, smooth (and differentiable) at e = 0.

    Expanding q x'^2 + y'^2 / q with q = (1 - e) / (1 + e) gives
    xi^2 = ((1 + e^2) r^2 - 2 [e1 (x^2 - y^2) + 2 e2 x y]) / (1 - e^2), free of sqrt(e) and atan2.
    """
    xp = namespace(x)
    e_sq = e1**2 + e2**2
    xi_sq = ((1 + e_sq) * (x**2 + y**2) - 2 * (e1 * (x**2 - y**2) + 2 * e2 * x * y)) / (1 - e_sq)
    return xp.sqrt(xp.clip(xi_sq, 0.0, None) if xp is np else xi_sq.clamp(min=0.0))
