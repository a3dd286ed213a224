"""Physics refinement at inference: Levenberg-Marquardt on the renderer's misfit, from the network's estimate.

The residual is the plain convergence difference at the map's native resolution: for white pixel noise
that is the likelihood (the fit does not chase noise in the faint outskirts), and for a noiseless map
any metric leads to the same exact solution. Six parameters per map (theta, centre included) and a
Jacobian from six forward-mode derivatives make each step cheap and fully batched. The Gauss-Newton (Laplace) covariance
sigma^2 (J^T J)^-1, with sigma^2 estimated from the residuals, gives refined-mode uncertainties.
"""

from __future__ import annotations

import torch
from torch.func import jvp

from .encoding import N_THETA
from .physics import render_theta

MAX_ELLIPTICITY = 0.9
MAX_CENTRE = 0.5  # |x_c|, |y_c| / fov: the centre stays on the map
# Bounds of (log10 kappa_s, log10 r_s/fov) during the fit: eight prior widths around the training prior
# (ThetaScaler), far outside any lensing halo. A map that is not a halo (noise, garbage) can pull the fit
# anywhere; inside the box the renderer and the mass conversion stay finite.
THETA_BOX = ((-7.0, 3.0), (-4.0, 2.0))


def _residual(theta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    residual = (render_theta(theta, target.shape[-1]) - target).flatten(1)
    return residual if weight is None else residual * weight


def _jacobian(theta: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """d residual / d theta, (B, P, 6), from six forward-mode products."""
    eye = torch.eye(N_THETA, dtype=theta.dtype)
    columns = [jvp(lambda t: _residual(t, target, weight), (theta,), (eye[k].expand_as(theta),))[1]
               for k in range(N_THETA)]
    return torch.stack(columns, dim=-1)


def _into_box(theta: torch.Tensor) -> torch.Tensor:
    """theta with log10 kappa_s and log10 r_s/fov clamped to THETA_BOX, e shrunk to MAX_ELLIPTICITY and the
    centre kept on the map."""
    scales = [theta[:, k : k + 1].clamp(low, high) for k, (low, high) in enumerate(THETA_BOX)]
    e = torch.linalg.vector_norm(theta[:, 2:4], dim=1, keepdim=True)
    shrink = torch.clamp(MAX_ELLIPTICITY / e.clamp(min=1e-12), max=1.0)
    return torch.cat([*scales, theta[:, 2:4] * shrink, theta[:, 4:].clamp(-MAX_CENTRE, MAX_CENTRE)], dim=1)


@torch.no_grad()
def refine_theta(
    theta0: torch.Tensor, maps: torch.Tensor, steps: int = 12, damping: float = 1e-3,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined theta (B, 6) and its Laplace covariance (B, 6, 6), float64, fitting maps (B, N, N).

    `mask` (B, N, N), true where a pixel counts, leaves the others out of the fit (pixels that hold
    something other than the host, such as subhalos).

    A step is taken only where the damped system solves and lowers the misfit, so a map the model
    cannot describe keeps its last finite estimate (at worst the network's) instead of failing the batch.
    """
    theta = _into_box(theta0.detach().double())
    target = maps.double()
    weight = None if mask is None else mask.flatten(1).double()
    lam = torch.full((theta.shape[0], 1, 1), damping, dtype=torch.float64)
    residual = _residual(theta, target, weight)
    cost = residual.square().sum(1)
    for _ in range(steps):
        jac = _jacobian(theta, target, weight)
        jtj = jac.transpose(1, 2) @ jac
        jtr = jac.transpose(1, 2) @ residual[..., None]
        diag = torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2))
        step, info = torch.linalg.solve_ex(jtj + lam * diag + 1e-300, -jtr)
        candidate = _into_box(theta + torch.nan_to_num(step[..., 0]))
        new_residual = _residual(candidate, target, weight)
        new_cost = new_residual.square().sum(1)
        better = (info == 0) & torch.isfinite(new_cost) & (new_cost < cost)
        theta = torch.where(better[:, None], candidate, theta)
        residual = torch.where(better[:, None], new_residual, residual)
        cost = torch.where(better, new_cost, cost)
        lam = torch.where(better[:, None, None], lam * 0.3, lam * 10.0)
    jac = _jacobian(theta, target, weight)
    counted = residual.shape[1] if weight is None else weight.sum(1)
    noise_variance = cost / (counted - N_THETA)
    covariance = noise_variance[:, None, None] * torch.linalg.pinv(jac.transpose(1, 2) @ jac)
    return theta, covariance
