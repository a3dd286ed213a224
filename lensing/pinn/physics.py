"""The PINN's differentiable forward model: theta -> host convergence map (docs/design.md sections 3, 5)."""

from __future__ import annotations

import torch

from ..grid import elliptical_radius_components
from ..nfw_math import nfw_projected
from ..render import unit_grid


def render_theta(theta: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Elliptical NFW maps (B, N, N) for theta (B, 6) = (log10 kappa_s, log10 r_s/fov, e1, e2, x_c/fov, y_c/fov).

    Smooth in all six components (also at e = 0), so it serves both the physics loss and the
    Gauss-Newton refinement.
    """
    x, y = unit_grid(grid_size, theta.dtype, theta.device)
    kappa_s = (10.0 ** theta[:, 0])[:, None, None]
    r_s = (10.0 ** theta[:, 1])[:, None, None]
    dx, dy = x - theta[:, 4, None, None], y - theta[:, 5, None, None]
    xi = elliptical_radius_components(dx, dy, theta[:, 2, None, None], theta[:, 3, None, None])
    return 2.0 * kappa_s * nfw_projected(xi / r_s)
