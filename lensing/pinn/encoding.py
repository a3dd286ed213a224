"""Dimensionless targets the PINN predicts, and their analytic conversion to physical parameters.

theta = (log10 kappa_s, log10(r_s / fov), e1, e2, x_c / fov, y_c / fov) with e1 = e cos 2 phi,
e2 = e sin 2 phi and (x_c, y_c) the halo centre relative to the map centre. A map's pixels depend on the
host only through theta, so one network serves any z_lens, z_source and fov_kpc: M_vir and c follow from
(kappa_s, r_s) through docs/design.md section 3 (`mass_from_lensing`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..cosmology import LensGeometry
from ..halo import mass_from_lensing
from ..synthetic import HostBatch, kappa_s_of

# Regressed quantities whose accuracy and coverage are reported, in the space the errors are measured.
REPORTED = ("log10_M_vir", "log10_r_s", "ellipticity", "center_x_kpc", "center_y_kpc")
N_THETA = 6


@dataclass(frozen=True)
class ThetaScaler:
    """Affine standardisation of theta for the network's output layer (fixed, stored in the card)."""

    mean: tuple[float, ...] = (-1.8, -0.8, 0.0, 0.0, 0.0, 0.0)
    scale: tuple[float, ...] = (0.6, 0.35, 0.2, 0.2, 0.02, 0.02)  # the centre: the network's residual

    def standardise(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - theta.new_tensor(self.mean)) / theta.new_tensor(self.scale)

    def unstandardise(self, z: torch.Tensor) -> torch.Tensor:
        return z * z.new_tensor(self.scale) + z.new_tensor(self.mean)


def with_offset(theta, offset):
    """Absolute theta (..., 6) from the network's (centre part relative to the locator's offset (B, 2));
    numpy or torch, theta of shape (B, 6) or (B, T, 6)."""
    shift = offset if theta.ndim == 2 else offset[:, None]
    if isinstance(theta, torch.Tensor):
        return torch.cat([theta[..., :4], theta[..., 4:] + shift], dim=-1)
    return np.concatenate([theta[..., :4], theta[..., 4:] + shift], axis=-1)


def spread_units(fov_kpc: float) -> np.ndarray:
    """Factors from the head's spreads (centre in units of the field) to the REPORTED units (kpc)."""
    return np.array([1.0, 1.0, 1.0, fov_kpc, fov_kpc])


def theta_from_hosts(hosts: HostBatch, geometry: LensGeometry, fov_kpc: float) -> np.ndarray:
    """True theta (B, 6) of a batch of hosts."""
    kappa_s = kappa_s_of(hosts.M_vir, hosts.scale_radius, geometry)
    two_phi = np.radians(2.0 * hosts.position_angle)
    center_x, center_y = hosts.centres()
    return np.stack(
        [
            np.log10(kappa_s),
            np.log10(hosts.scale_radius / fov_kpc),
            hosts.ellipticity * np.cos(two_phi),
            hosts.ellipticity * np.sin(two_phi),
            center_x / fov_kpc,
            center_y / fov_kpc,
        ],
        axis=-1,
    )


def physical_from_theta(theta, geometry: LensGeometry, fov_kpc):
    """Physical parameters from theta (..., 6), numpy or torch: M_vir, r_s, c, e, position_angle, centre.

    `fov_kpc` may be a float or an array broadcasting against theta[..., 0].
    """
    is_torch = isinstance(theta, torch.Tensor)
    xp = torch if is_torch else np
    kappa_s = 10.0 ** theta[..., 0]
    r_s = 10.0 ** theta[..., 1] * fov_kpc
    mass, concentration = mass_from_lensing(kappa_s, r_s, geometry)
    e1, e2 = theta[..., 2], theta[..., 3]
    ellipticity = xp.sqrt(e1**2 + e2**2)
    angle = xp.remainder(xp.rad2deg(0.5 * xp.arctan2(e2, e1)), 180.0)
    return {"M_vir": mass, "r_s": r_s, "concentration": concentration, "ellipticity": ellipticity,
            "position_angle": angle, "center_x_kpc": theta[..., 4] * fov_kpc, "center_y_kpc": theta[..., 5] * fov_kpc}


def reported_from_physical(physical: dict) -> dict:
    """The quantities in which accuracy and coverage are measured (log10 M, log10 r_s, e, centre in kpc)."""
    xp = torch if isinstance(physical["M_vir"], torch.Tensor) else np
    return {
        "log10_M_vir": xp.log10(physical["M_vir"]),
        "log10_r_s": xp.log10(physical["r_s"]),
        "ellipticity": physical["ellipticity"],
        "center_x_kpc": physical["center_x_kpc"],
        "center_y_kpc": physical["center_y_kpc"],
    }


def reported_array(theta, geometry: LensGeometry, fov_kpc):
    """theta (..., 6) -> (..., 5) in the REPORTED space (numpy or torch, differentiable)."""
    reported = reported_from_physical(physical_from_theta(theta, geometry, fov_kpc))
    stack = torch.stack if isinstance(theta, torch.Tensor) else np.stack
    return stack([reported[name] for name in REPORTED], -1)


def reported_std_from_covariance(theta: np.ndarray, covariance: np.ndarray, geometry: LensGeometry, fov_kpc,
                                 step: float = 1e-5) -> np.ndarray:
    """Standard deviations (B, 5) in REPORTED space for a theta covariance (B, 6, 6) (delta method,
    with the Jacobian of the analytic conversion from central differences)."""
    columns = []
    for k in range(theta.shape[1]):
        shift = np.zeros_like(theta)
        shift[:, k] = step
        columns.append((reported_array(theta + shift, geometry, fov_kpc)
                        - reported_array(theta - shift, geometry, fov_kpc))
                       / (2 * step))
    jacobian = np.stack(columns, axis=-1)  # (B, 5, 6)
    variance = np.einsum("bik,bkl,bil->bi", jacobian, covariance, jacobian)
    return np.sqrt(np.clip(variance, 0.0, None))
