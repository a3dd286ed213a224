"""Dark-matter scenarios drawn on top of a host halo: CDM, WDM and SIDM (docs/design.md section 4).

Recipes (all draws from one seeded numpy Generator, so a seed reproduces a map exactly):

* Subhalo mass function (CDM): dN/dm = A m^-1.9 for m in [1e-3, 1e-1] M_host (Springel et al. 2008,
  Aquarius, slope -1.9). A is set so that the expected mass in subhalos is f_sub M_host with
  f_sub ~ U(0.01, 0.05), the projected mass fractions of strong-lens studies (Dalal & Kochanek 2002).
* WDM: the CDM function times (1 + gamma m_hm / m)^-beta with gamma = 2.7, beta = 0.99 (Lovell et al.
  2014, subhalos), half-mode mass m_hm log-uniform in [10^-2.5, 10^-1.5] M_host; drawn by thinning the
  CDM population, so small subhalos are rare. A smooth host is the limit m_hm -> infinity.
* SIDM: a cored host, rho = rho_s / ((r + r_c)/r_s (1 + r/r_s)^2), r_c = alpha r_s with
  alpha ~ U(0.1, 0.5) (self-interaction cores of Rocha et al. 2013 / Kaplinghat et al. 2016 scale),
  plus a CDM-like subhalo population. The core keeps the NFW rho_s and r_s of the labelled
  (M_vir, r_s), so the cored host's own M_200 is 13-50 % lower: M_vir of an SIDM map names the NFW
  halo it was cored from, which is what the PINN is trained to report.
* Each subhalo: NFW with M_200c = m and Duffy et al. (2008) concentration
  c = 5.71 (m / 2e12 h^-1 Msun)^-0.084 (1 + z)^-0.47, truncated (BMO 2009) at the Jacobi radius
  r_t = r (m / (3 M_host(<r)))^(1/3), using the projected distance r for the 3-D one. Positions follow
  the host: projected radii from the host's projected NFW mass profile inside r_200, isotropic angle,
  stretched to the host's ellipticity and position angle, around the host's centre (which may sit off
  the map centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .grid import q_from_ellipticity
from .halo import HaloParameters, characteristic_density, duffy_concentration, r200_from_mass
from .limits import check_choice
from .nfw_math import nfw_enclosed, nfw_mass_function

SCENARIOS = ("CDM", "WDM", "SIDM")
SCENARIO_CLASS = {name: index for index, name in enumerate(SCENARIOS)}
# What the classifier reports: the three scenarios, and "none" for a map with no detectable substructure
# (a smooth host, or substructure hidden under the noise). "none" comes last so a scenario's class id is
# its index in SCENARIOS.
NO_SUBSTRUCTURE = "none"
CLASS_NAMES = (*SCENARIOS, NO_SUBSTRUCTURE)
NONE_CLASS = CLASS_NAMES.index(NO_SUBSTRUCTURE)
CLASS_DESCRIPTIONS = {
    "CDM": "cold dark matter: many subhalos, down to the smallest masses drawn",
    "WDM": "warm dark matter: subhalos below the half-mode mass suppressed, so few small ones",
    "SIDM": "self-interacting dark matter: a cored host (flat central density), subhalos as in CDM",
    NO_SUBSTRUCTURE: "no detectable substructure: a smooth host, or substructure lost in the noise",
}

SUBHALO_SLOPE = 1.9
SUBHALO_MASS_RANGE = (1e-3, 1e-1)  # in units of M_host
SUBHALO_FRACTION_RANGE = (0.01, 0.05)
WDM_HALF_MODE_LOG10_RANGE = (-2.5, -1.5)  # log10(m_hm / M_host)
WDM_GAMMA, WDM_BETA = 2.7, 0.99
SIDM_CORE_RANGE = (0.1, 0.5)  # r_c / r_s
MIN_TAU = 0.5


@dataclass(frozen=True)
class Subhalos:
    """A subhalo population: positions (kpc from the map centre), masses (Msun), truncated-NFW lensing parameters."""

    x: np.ndarray
    y: np.ndarray
    mass: np.ndarray
    kappa_s: np.ndarray
    r_s: np.ndarray
    tau: np.ndarray

    @classmethod
    def empty(cls) -> Subhalos:
        zero = np.zeros(0)
        return cls(zero, zero, zero, zero, zero, zero)

    def __len__(self) -> int:
        return int(self.mass.size)


@dataclass(frozen=True)
class ScenarioRealisation:
    """One draw of a scenario: the host's core (SIDM) and its subhalos, with the recipe's draws."""

    name: str
    core_fraction: float | None
    subhalos: Subhalos
    draws: dict = field(default_factory=dict)

    @property
    def class_id(self) -> int:
        return SCENARIO_CLASS[self.name]

    def substructure_in_field(self, fov_kpc: float) -> bool:
        """Whether a map of this field shows any of the scenario: an SIDM core, or a subhalo inside the field.

        A draw whose subhalos all fall outside the field (about half of all WDM draws) leaves a smooth
        host on the map: its truth for the classifier is "none".
        """
        half = 0.5 * fov_kpc
        inside = (np.abs(self.subhalos.x) <= half) & (np.abs(self.subhalos.y) <= half)
        return self.core_fraction is not None or bool(inside.any())


def _sample_power_law(rng: np.random.Generator, n: int, slope: float, low: float, high: float) -> np.ndarray:
    """n draws from p(m) ~ m^-slope on [low, high] by inverting the CDF."""
    k = 1.0 - slope
    u = rng.random(n)
    return (low**k + u * (high**k - low**k)) ** (1.0 / k)


def expected_subhalo_count(subhalo_fraction: float) -> float:
    """Expected CDM subhalo count for a mass fraction f (masses in units of M_host)."""
    low, high = SUBHALO_MASS_RANGE
    mass_integral = (high ** (2 - SUBHALO_SLOPE) - low ** (2 - SUBHALO_SLOPE)) / (2 - SUBHALO_SLOPE)
    number_integral = (low ** (1 - SUBHALO_SLOPE) - high ** (1 - SUBHALO_SLOPE)) / (SUBHALO_SLOPE - 1)
    return subhalo_fraction / mass_integral * number_integral


def sample_projected_radii(rng: np.random.Generator, n: int, r_s: float, r_max: float) -> np.ndarray:
    """Projected radii following the host's projected NFW mass profile inside r_max."""
    table = np.linspace(1e-4, r_max / r_s, 2048)
    cumulative = nfw_enclosed(table)
    cumulative = (cumulative - cumulative[0]) / (cumulative[-1] - cumulative[0])
    return np.interp(rng.random(n), cumulative, table) * r_s


def wdm_survival(mass_ratio, half_mode_mass):
    """Fraction of CDM subhalos of mass ratio m / M_host that survive in WDM (Lovell et al. 2014)."""
    return (1.0 + WDM_GAMMA * half_mode_mass / mass_ratio) ** (-WDM_BETA)


def place_on_ellipses(
    radius: np.ndarray, angle: np.ndarray, ellipticity: float, position_angle_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (kpc) on the host's isodensity ellipses: xi(x, y) equals the drawn radius."""
    q = q_from_ellipticity(ellipticity)
    x_rot = radius * np.cos(angle) / math.sqrt(q)
    y_rot = radius * np.sin(angle) * math.sqrt(q)
    phi = math.radians(position_angle_deg)
    return x_rot * math.cos(phi) - y_rot * math.sin(phi), x_rot * math.sin(phi) + y_rot * math.cos(phi)


def subhalo_structure(
    mass: np.ndarray, distance: np.ndarray, halo: HaloParameters
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kappa_s, r_s (kpc) and tau of truncated NFW subhalos of M_200c `mass` at host distance `distance`."""
    geometry = halo.geometry
    h = geometry.H0 / 100.0
    concentration = duffy_concentration(mass, geometry.z_lens, h)
    r_s = r200_from_mass(mass, geometry.rho_crit) / concentration
    kappa_s = characteristic_density(concentration, geometry.rho_crit) * r_s / geometry.sigma_crit
    host_enclosed = 4 * math.pi * halo.rho_s * halo.r_s**3 * nfw_mass_function(distance / halo.r_s)
    tidal_radius = distance * (mass / (3.0 * host_enclosed)) ** (1.0 / 3.0)
    tau = np.maximum(tidal_radius / r_s, MIN_TAU)
    return kappa_s, r_s, tau


def _draw_subhalos(
    rng: np.random.Generator,
    halo: HaloParameters,
    ellipticity: float,
    position_angle_deg: float,
    half_mode_mass: float | None,
    center: tuple[float, float],
) -> tuple[Subhalos, float]:
    """Draw a CDM population (thinned for WDM when half_mode_mass is given) around the host's centre (kpc)."""
    fraction = rng.uniform(*SUBHALO_FRACTION_RANGE)
    count = rng.poisson(expected_subhalo_count(fraction))
    low, high = SUBHALO_MASS_RANGE
    mass_ratio = _sample_power_law(rng, count, SUBHALO_SLOPE, low, high)
    keep_draw = rng.random(count)
    radius = sample_projected_radii(rng, count, halo.r_s, halo.r200)
    angle = rng.uniform(0.0, 2.0 * math.pi, count)
    if half_mode_mass is not None:
        kept = keep_draw < wdm_survival(mass_ratio, half_mode_mass)
        mass_ratio, radius, angle = mass_ratio[kept], radius[kept], angle[kept]
    if mass_ratio.size == 0:
        return Subhalos.empty(), fraction
    x, y = place_on_ellipses(radius, angle, ellipticity, position_angle_deg)
    mass = mass_ratio * halo.M_vir
    kappa_s, r_s, tau = subhalo_structure(mass, np.maximum(radius, 1e-3 * halo.r_s), halo)
    return Subhalos(x=x + center[0], y=y + center[1], mass=mass, kappa_s=kappa_s, r_s=r_s, tau=tau), fraction


def draw_scenario(
    name: str,
    halo: HaloParameters,
    ellipticity: float = 0.0,
    position_angle_deg: float = 0.0,
    rng: np.random.Generator | int | None = None,
    center_x: float = 0.0,
    center_y: float = 0.0,
) -> ScenarioRealisation:
    """Draw scenario `name` ('CDM', 'WDM' or 'SIDM') for a host centred at (center_x, center_y) kpc from the
    map centre; `rng` may be a seed. The centre only moves the subhalos: the same seed draws the same population."""
    check_choice("scenario", name, SCENARIOS)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    core_fraction = None
    half_mode_mass = None
    draws: dict = {}
    if name == "SIDM":
        core_fraction = float(rng.uniform(*SIDM_CORE_RANGE))
        draws["core_fraction"] = core_fraction
    if name == "WDM":
        half_mode_mass = 10.0 ** rng.uniform(*WDM_HALF_MODE_LOG10_RANGE)
        draws["half_mode_mass_ratio"] = half_mode_mass
    subhalos, fraction = _draw_subhalos(rng, halo, ellipticity, position_angle_deg, half_mode_mass,
                                        (float(center_x), float(center_y)))
    draws["subhalo_fraction_parent"] = fraction
    draws["n_subhalos"] = len(subhalos)
    return ScenarioRealisation(name=name, core_fraction=core_fraction, subhalos=subhalos, draws=draws)
