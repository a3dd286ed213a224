"""Ceiling for CDM-vs-WDM classification under the recipe of lensing/scenarios.py.

An oracle sees the exact mass of every subhalo inside the default 1000-kpc field and applies the
Bayes-optimal rule: the likelihood of the observed masses under each scenario, with the recipe's
nuisance draws (subhalo fraction, WDM half-mode mass) integrated out on a grid. Both scenarios put
subhalos at the same places, so positions drop out except through the fraction of the host's
population that falls inside the field. No map-based classifier can beat this rule on average; a map
hides subhalos that are faint or sit on a bright host, so the reachable accuracy is lower.

    python docs/model/scenario_oracle.py [N_MAPS]
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np

from lensing import scenarios
from lensing.cosmology import lens_geometry
from lensing.grid import DEFAULT_FOV_KPC
from lensing.halo import HaloParameters
from lensing.synthetic import sample_hosts

GRID = 61  # nodes per nuisance parameter
SEED = 5


class BayesRule:
    """Marginal likelihoods of a set of subhalo mass ratios under CDM and WDM."""

    def __init__(self) -> None:
        low, high = scenarios.SUBHALO_MASS_RANGE
        fractions = np.linspace(*scenarios.SUBHALO_FRACTION_RANGE, GRID)
        self.counts = np.array([scenarios.expected_subhalo_count(f) for f in fractions])
        self.half_modes = 10.0 ** np.linspace(*scenarios.WDM_HALF_MODE_LOG10_RANGE, GRID)
        masses = np.geomspace(low, high, 4000)
        density = masses ** -scenarios.SUBHALO_SLOPE
        density /= np.trapezoid(density, masses)
        self.surviving = np.array([np.trapezoid(density * scenarios.wdm_survival(masses, h), masses)
                                   for h in self.half_modes])

    def says_wdm(self, mass_ratio: np.ndarray, fraction_in_field: float) -> bool:
        """Poisson-process likelihoods; the mass function itself cancels between the two."""
        expected = self.counts * fraction_in_field
        n = mass_ratio.size
        cdm = np.mean(np.exp(-expected) * expected**n)
        log_kept = np.log(scenarios.wdm_survival(mass_ratio[None, :], self.half_modes[:, None])).sum(axis=1)
        wdm = np.mean(np.exp(-expected[:, None] * self.surviving[None, :]) * expected[:, None] ** n
                      * np.exp(log_kept)[None, :])
        return bool(wdm > cdm)


def in_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which positions (kpc) fall inside the default square field of view."""
    half = DEFAULT_FOV_KPC / 2
    return (np.abs(x) < half) & (np.abs(y) < half)


def fraction_in_field(halo: HaloParameters, ellipticity: float, angle_deg: float, rng: np.random.Generator) -> float:
    """Share of this host's subhalo positions inside the field, from the recipe's own placement."""
    radius = scenarios.sample_projected_radii(rng, 4000, halo.r_s, halo.r200)
    angle = rng.uniform(0.0, 2.0 * math.pi, radius.size)
    return float(np.mean(in_field(*scenarios.place_on_ellipses(radius, angle, ellipticity, angle_deg))))


def main(n_maps: int) -> dict:
    rng = np.random.default_rng(SEED)
    geometry = lens_geometry()
    hosts = sample_hosts(n_maps, rng)
    rule = BayesRule()
    correct = 0
    for k in range(n_maps):
        halo = HaloParameters(float(hosts.M_vir[k]), float(hosts.scale_radius[k]), geometry)
        e, angle = float(hosts.ellipticity[k]), float(hosts.position_angle[k])
        is_wdm = k % 2 == 1
        subhalos = scenarios.draw_scenario("WDM" if is_wdm else "CDM", halo, e, angle, rng).subhalos
        inside = in_field(subhalos.x, subhalos.y)
        correct += rule.says_wdm(subhalos.mass[inside] / halo.M_vir, fraction_in_field(halo, e, angle, rng)) == is_wdm
    cdm_vs_wdm = correct / n_maps
    return {"n_maps": n_maps, "cdm_vs_wdm_accuracy": cdm_vs_wdm,
            "three_class_accuracy_if_sidm_is_always_recognised": (1 + 2 * cdm_vs_wdm) / 3}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30000)))
