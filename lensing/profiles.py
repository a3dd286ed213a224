"""Lens profiles in float64 numpy, one class per profile with one interface (`convergence(x, y)`).

Coordinates are physical kpc on the lens plane, relative to the map centre; every profile has a centre
(center_x, center_y, default 0: the map centre). Each profile holds its own dimensionless normalisation
kappa_s and scale radius r_s, so hosts (built from HaloParameters) and subhalos (built from their own
kappa_s) share the same classes.

`convergence_map` renders the pixel grid of docs/design.md section 3. A host centred on the map is
symmetric under (x, y) -> (-x, -y) (and a spherical one under each reflection), and the grid's pixel
centres are exactly antisymmetric, so only the independent part is evaluated and mirrored: bit-identical
to `convergence` on every pixel, at a half (elliptical) or a quarter (spherical) of the cost. An
off-centre host has no such symmetry on the grid and is evaluated on every pixel.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .grid import DEFAULT_FOV_KPC, pixel_centres, pixel_grid, q_from_ellipticity
from .halo import HaloParameters
from .limits import (
    CORE_FRACTION,
    ELLIPTICITY,
    POSITION_ANGLE,
    PROFILE_ELLIPTICITY,
    InputError,
    check_choice,
    check_finite,
    check_finite_positive,
)
from .nfw_math import (
    cored_nfw_projected_sq,
    nfw_enclosed,
    nfw_projected_sq,
    truncated_nfw_projected_sq,
)

_BLOCK = 16384  # elements evaluated at once: the ~10 temporaries of a block stay in the CPU cache


def _as_float64(a) -> np.ndarray:
    return np.asarray(a, np.float64)


def _blockwise(func, x, y) -> np.ndarray:
    """func(x, y) for elementwise `func`, evaluated on flat blocks (same values, ~2x faster on large maps)."""
    x, y = _as_float64(x), _as_float64(y)
    if math.prod(np.broadcast_shapes(x.shape, y.shape)) <= _BLOCK:
        return func(x, y)
    x, y = np.broadcast_arrays(x, y)
    out = np.empty(x.shape)
    flat_x, flat_y, flat_out = x.reshape(-1), y.reshape(-1), out.reshape(-1)
    for start in range(0, flat_out.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        flat_out[block] = func(flat_x[block], flat_y[block])
    return out


def _quadratic_form(q: float, phi_deg: float, r_s: float) -> tuple[float, float, float]:
    """(a, b, c) with (xi / r_s)^2 = a x^2 + b x y + c y^2 for the elliptical radius of docs/design.md section 3.

    Expands q x'^2 + y'^2 / q with x' = x cos phi + y sin phi, y' = -x sin phi + y cos phi.
    """
    phi = math.radians(phi_deg)
    cos2, sin2, sincos = math.cos(phi) ** 2, math.sin(phi) ** 2, math.sin(phi) * math.cos(phi)
    scale = 1.0 / r_s**2
    return (q * cos2 + sin2 / q) * scale, 2.0 * sincos * (q - 1.0 / q) * scale, (q * sin2 + cos2 / q) * scale


def _evaluate_form(form: tuple[float, float, float], x, y) -> np.ndarray:
    """a x^2 + b x y + c y^2; even under (x, y) -> (-x, -y) in floating point too."""
    a, b, c = form
    return a * x * x + b * x * y + c * y * y


def _point_symmetric_map(convergence, grid_size: int, fov_kpc: float) -> np.ndarray:
    """convergence(x, y) on the grid for kappa(-x, -y) = kappa(x, y): the first ceil(N/2) rows, mirrored."""
    centres = pixel_centres(grid_size, fov_kpc)
    top = convergence(centres[None, :], centres[: grid_size - grid_size // 2, None])
    return np.concatenate([top, top[: grid_size // 2][::-1, ::-1]])


def _mirror_symmetric_map(convergence, grid_size: int, fov_kpc: float) -> np.ndarray:
    """convergence(x, y) on the grid for a kappa even in x and in y: the quadrant x, y >= 0, mirrored."""
    centres = pixel_centres(grid_size, fov_kpc)
    positive = centres[grid_size // 2 :]
    quadrant = convergence(positive[None, :], positive[:, None])
    mirrored = len(positive) - grid_size % 2  # on odd grids the zero row/column is not repeated
    rows = np.concatenate([quadrant[::-1][:mirrored], quadrant])
    return np.concatenate([rows[:, ::-1][:, :mirrored], rows], axis=1)


class Profile(ABC):
    """A projected mass distribution that yields the convergence at arbitrary positions."""

    @abstractmethod
    def convergence(self, x, y) -> np.ndarray:
        """Dimensionless surface density kappa at (x, y) in kpc."""

    def convergence_map(self, grid_size: int, fov_kpc: float = DEFAULT_FOV_KPC) -> np.ndarray:
        """kappa on the (grid_size, grid_size) pixel grid of docs/design.md section 3 (map[i][j] at X[i][j],
        Y[i][j])."""
        return self.convergence(*pixel_grid(grid_size, fov_kpc))


@dataclass(frozen=True)
class NFW(Profile):
    """Spherical NFW: kappa(R) = 2 kappa_s F(R / r_s)."""

    kappa_s: float
    r_s: float
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)

    @classmethod
    def from_halo(cls, halo: HaloParameters, center_x: float = 0.0, center_y: float = 0.0) -> NFW:
        return cls(halo.kappa_s, halo.r_s, center_x, center_y)

    def _convergence(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = x - self.center_x
        dy = y - self.center_y
        return 2.0 * self.kappa_s * nfw_projected_sq((dx * dx + dy * dy) * (1.0 / self.r_s**2))

    def convergence(self, x, y) -> np.ndarray:
        return _blockwise(self._convergence, x, y)

    def convergence_map(self, grid_size: int, fov_kpc: float = DEFAULT_FOV_KPC) -> np.ndarray:
        if self.center_x != 0.0 or self.center_y != 0.0:
            return super().convergence_map(grid_size, fov_kpc)
        return _mirror_symmetric_map(self.convergence, grid_size, fov_kpc)

    def mass_2d(self, radius, sigma_crit: float) -> np.ndarray:
        """Projected mass (Msun) inside radius R (kpc): 4 pi rho_s r_s^3 h(R / r_s)."""
        radius = _as_float64(radius)
        return 4.0 * math.pi * self.kappa_s * sigma_crit * self.r_s**2 * nfw_enclosed(radius / self.r_s)

    def deflection(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Reduced deflection (alpha_x, alpha_y) in kpc on the lens plane.

        alpha(R) = M_2D(<R) / (pi Sigma_cr R), pointing to the centre's far side along the radius;
        divide by LensGeometry.kpc_per_arcsec for arcsec.
        """
        dx = _as_float64(x) - self.center_x
        dy = _as_float64(y) - self.center_y
        radius = np.maximum(np.hypot(dx, dy), 1e-12 * self.r_s)
        magnitude = 4.0 * self.kappa_s * self.r_s**2 * nfw_enclosed(radius / self.r_s) / radius
        return magnitude * dx / radius, magnitude * dy / radius


class _PointSymmetricProfile(Profile):
    """A profile symmetric under (x, y) -> (-x, -y) about its centre: half a map suffices when it is centred.

    Subclasses have `center_x`, `center_y` (kpc) and define `_centred_convergence` at offsets from the centre.
    """

    center_x: float
    center_y: float

    @abstractmethod
    def _centred_convergence(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """kappa at float64 offsets (dx, dy) from the profile's centre."""

    def _convergence(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._centred_convergence(x - self.center_x, y - self.center_y)

    def convergence(self, x, y) -> np.ndarray:
        return _blockwise(self._convergence, x, y)

    def convergence_map(self, grid_size: int, fov_kpc: float = DEFAULT_FOV_KPC) -> np.ndarray:
        if self.center_x != 0.0 or self.center_y != 0.0:
            return super().convergence_map(grid_size, fov_kpc)
        return _point_symmetric_map(self.convergence, grid_size, fov_kpc)


def _check_centre(center_x: float, center_y: float) -> None:
    check_finite("center_x", center_x)
    check_finite("center_y", center_y)


@dataclass(frozen=True)
class EllipticalNFW(_PointSymmetricProfile):
    """NFW convergence evaluated at the elliptical radius xi (docs/design.md section 3) about its centre."""

    kappa_s: float
    r_s: float
    ellipticity: float
    position_angle_deg: float = 0.0
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        PROFILE_ELLIPTICITY.check("ellipticity", self.ellipticity)
        POSITION_ANGLE.check("position_angle", self.position_angle_deg)
        _check_centre(self.center_x, self.center_y)

    @classmethod
    def from_halo(cls, halo: HaloParameters, ellipticity: float, position_angle_deg: float = 0.0,
                  center_x: float = 0.0, center_y: float = 0.0) -> EllipticalNFW:
        ELLIPTICITY.check("ellipticity", ellipticity)
        return cls(halo.kappa_s, halo.r_s, ellipticity, position_angle_deg, center_x, center_y)

    @property
    def q(self) -> float:
        return q_from_ellipticity(self.ellipticity)

    def elliptical_radius(self, x, y) -> np.ndarray:
        """xi (kpc) of docs/design.md section 3, about the profile's centre."""
        form = _quadratic_form(self.q, self.position_angle_deg, self.r_s)
        dx, dy = _as_float64(x) - self.center_x, _as_float64(y) - self.center_y
        return self.r_s * np.sqrt(_evaluate_form(form, dx, dy))

    def _centred_convergence(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        form = _quadratic_form(self.q, self.position_angle_deg, self.r_s)
        return 2.0 * self.kappa_s * nfw_projected_sq(_evaluate_form(form, dx, dy))


@dataclass(frozen=True)
class CoredNFW(_PointSymmetricProfile):
    """Cored NFW rho = rho_s / ((r + r_c)/r_s (1 + r/r_s)^2), r_c = core_fraction * r_s (SIDM hosts).

    Optionally elliptical in the same way as EllipticalNFW. rho_s and r_s are those of the NFW host.
    """

    kappa_s: float
    r_s: float
    core_fraction: float
    ellipticity: float = 0.0
    position_angle_deg: float = 0.0
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        CORE_FRACTION.check("core_fraction", self.core_fraction)
        PROFILE_ELLIPTICITY.check("ellipticity", self.ellipticity)
        _check_centre(self.center_x, self.center_y)

    @classmethod
    def from_halo(
        cls, halo: HaloParameters, core_fraction: float, ellipticity: float = 0.0, position_angle_deg: float = 0.0,
        center_x: float = 0.0, center_y: float = 0.0,
    ) -> CoredNFW:
        return cls(halo.kappa_s, halo.r_s, core_fraction, ellipticity, position_angle_deg, center_x, center_y)

    def _centred_convergence(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        form = _quadratic_form(q_from_ellipticity(self.ellipticity), self.position_angle_deg, self.r_s)
        return 2.0 * self.kappa_s * cored_nfw_projected_sq(_evaluate_form(form, dx, dy), self.core_fraction)


@dataclass(frozen=True)
class TruncatedNFW(Profile):
    """Spherical truncated NFW (Baltz, Marshall & Oguri 2009) with truncation radius tau * r_s (subhalos)."""

    kappa_s: float
    r_s: float
    tau: float
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self) -> None:
        check_finite_positive("kappa_s", self.kappa_s)
        check_finite_positive("scale_radius", self.r_s)
        check_finite_positive("tau", self.tau)

    def _convergence(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx = x - self.center_x
        dy = y - self.center_y
        return 2.0 * self.kappa_s * truncated_nfw_projected_sq((dx * dx + dy * dy) * (1.0 / self.r_s**2), self.tau)

    def convergence(self, x, y) -> np.ndarray:
        return _blockwise(self._convergence, x, y)


PROFILE_TYPES = ("NFW", "Elliptical NFW")


def check_round_nfw(profile_type: str, ellipticity: float) -> None:
    """InputError naming `ellipticity` when a round NFW is given one ("NFW" means e = 0)."""
    if profile_type == "NFW" and ellipticity != 0.0:
        raise InputError("ellipticity", "ellipticity must be 0 for profile_type 'NFW'; use 'Elliptical NFW'")


def host_profile(
    profile_type: str,
    halo: HaloParameters,
    ellipticity: float = 0.0,
    position_angle_deg: float = 0.0,
    core_fraction: float | None = None,
    center_x: float = 0.0,
    center_y: float = 0.0,
) -> Profile:
    """The host profile for a request: NFW, elliptical NFW, or a cored (SIDM) version of either, centred at
    (center_x, center_y) kpc from the map centre."""
    check_choice("profile_type", profile_type, PROFILE_TYPES)
    check_round_nfw(profile_type, ellipticity)
    ELLIPTICITY.check("ellipticity", ellipticity)
    if core_fraction is not None:
        return CoredNFW.from_halo(halo, core_fraction, ellipticity, position_angle_deg, center_x, center_y)
    if profile_type == "NFW":
        return NFW.from_halo(halo, center_x, center_y)
    return EllipticalNFW.from_halo(halo, ellipticity, position_angle_deg, center_x, center_y)
