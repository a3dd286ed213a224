"""Physics refinement at inference: Levenberg-Marquardt on the renderer's misfit, from the network's estimate.

The residual is the plain convergence difference at the map's native resolution: for white pixel noise
that is the likelihood (the fit does not chase noise in the faint outskirts), and for a noiseless map
any metric leads to the same exact solution. Four parameters per map and a Jacobian from four
forward-mode derivatives make each step cheap and fully batched. The Gauss-Newton (Laplace) covariance
sigma^2 (J^T J)^-1, with sigma^2 estimated from the residuals, gives refined-mode uncertainties.
"""

from __future__ import annotations

import torch
from torch.func import jvp

from .physics import render_theta

MAX_ELLIPTICITY = 0.9
N_THETA = 4


def _residual(theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (render_theta(theta, target.shape[-1]) - target).flatten(1)


def _jacobian(theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d residual / d theta, (B, P, 4), from four forward-mode products."""
    eye = torch.eye(N_THETA, dtype=theta.dtype)
    columns = [jvp(lambda t: _residual(t, target), (theta,), (eye[k].expand_as(theta),))[1] for k in range(N_THETA)]
    return torch.stack(columns, dim=-1)


def _clamp_ellipticity(theta: torch.Tensor) -> torch.Tensor:
    e = torch.linalg.vector_norm(theta[:, 2:], dim=1, keepdim=True)
    shrink = torch.clamp(MAX_ELLIPTICITY / e.clamp(min=1e-12), max=1.0)
    return torch.cat([theta[:, :2], theta[:, 2:] * shrink], dim=1)


@torch.no_grad()
def refine_theta(
    theta0: torch.Tensor, maps: torch.Tensor, steps: int = 12, damping: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined theta (B, 4) and its Laplace covariance (B, 4, 4), float64, fitting maps (B, N, N)."""
    theta = theta0.detach().double().clone()
    target = maps.double()
    lam = torch.full((theta.shape[0], 1, 1), damping, dtype=torch.float64)
    residual = _residual(theta, target)
    cost = residual.square().sum(1)
    for _ in range(steps):
        jac = _jacobian(theta, target)
        jtj = jac.transpose(1, 2) @ jac
        jtr = jac.transpose(1, 2) @ residual[..., None]
        diag = torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2))
        step = torch.linalg.solve(jtj + lam * diag + 1e-300, -jtr)[..., 0]
        candidate = _clamp_ellipticity(theta + step)
        new_residual = _residual(candidate, target)
        new_cost = new_residual.square().sum(1)
        better = new_cost < cost
        theta = torch.where(better[:, None], candidate, theta)
        residual = torch.where(better[:, None], new_residual, residual)
        cost = torch.where(better, new_cost, cost)
        lam = torch.where(better[:, None, None], lam * 0.3, lam * 10.0)
    jac = _jacobian(theta, target)
    noise_variance = cost / (residual.shape[1] - N_THETA)
    covariance = noise_variance[:, None, None] * torch.linalg.pinv(jac.transpose(1, 2) @ jac)
    return theta, covariance
