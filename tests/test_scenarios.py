"""Dark-matter scenarios (docs/design.md section 4): reproducibility, the recipes' statistics, and class ids.

Statistical tests average many seeded draws and compare with the expectation computed from the recipe's
documented definitions (mass function, fraction range, WDM suppression), with a margin of five
standard errors of the mean estimated from the same draws.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from lensing import EllipticalNFW, HaloParameters, MapRequest, generate_map, lens_geometry
from lensing.nfw_math import nfw_enclosed
from lensing.profiles import host_profile
from lensing.scenarios import SCENARIO_CLASS, SCENARIOS, WDM_BETA, WDM_GAMMA, draw_scenario
from lensing.synthetic import HostBatch, generate_batch

# The recipe of docs/design.md section 4 (definitions, not fitted outputs). The WDM suppression function
# (1 + gamma m_hm / m)^-beta is the code's documented choice (Lovell et al. 2014), so it comes from there.
DESIGN_CLASSES = {"CDM": 0, "WDM": 1, "SIDM": 2}
SUBHALO_SLOPE = 1.9  # dN/dm ~ m^-1.9
SUBHALO_MASS_RANGE = (1e-3, 1e-1)  # in M_host
SUBHALO_FRACTION_RANGE = (0.01, 0.05)
WDM_HALF_MODE_LOG10_RANGE = (-2.5, -1.5)  # log10(m_hm / M_host), log-uniform
SIDM_CORE_RANGE = (0.1, 0.5)  # r_c / r_s
DRAWS = 1000
SMALL = 1e-2  # "small" subhalos: m < 1e-2 M_host


@pytest.fixture(scope="module")
def halo() -> HaloParameters:
    return HaloParameters(2e13, 180.0, lens_geometry())


@pytest.fixture(scope="module")
def populations(halo) -> dict[str, list]:
    """DRAWS seeded draws per scenario on one elliptical host."""
    return {name: [draw_scenario(name, halo, 0.3, 25.0, seed) for seed in range(DRAWS)] for name in SCENARIOS}


def mean_and_error(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def mass_function_integral(power: float, low: float, high: float, survival=lambda m: 1.0) -> float:
    """int_low^high m^(power - slope) S(m) dm for the documented dN/dm ~ m^-slope."""
    value, _ = quad(lambda m: m ** (power - SUBHALO_SLOPE) * survival(m), low, high, epsrel=1e-12, limit=200)
    return value


def expected_small_count(survival_average) -> float:
    """E[N(m < SMALL)] = E[f] * int_small m^-slope S dm / int m^(1 - slope) dm (mass function normalised to f)."""
    low, high = SUBHALO_MASS_RANGE
    mean_fraction = sum(SUBHALO_FRACTION_RANGE) / 2
    return mean_fraction * survival_average(low, SMALL) / mass_function_integral(1.0, low, high)


def wdm_survival_average(low: float, high: float) -> float:
    """int m^-slope (1 + gamma m_hm / m)^-beta dm, averaged over log-uniform m_hm."""
    lo, hi = WDM_HALF_MODE_LOG10_RANGE
    def at(log_m_hm: float) -> float:
        m_hm = 10.0**log_m_hm
        return mass_function_integral(0.0, low, high, lambda m: (1 + WDM_GAMMA * m_hm / m) ** -WDM_BETA)
    return quad(at, lo, hi, epsrel=1e-10)[0] / (hi - lo)


def small_counts(draws, halo) -> list[int]:
    return [int(np.sum(d.subhalos.mass < SMALL * halo.M_vir)) for d in draws]


def test_class_ids_follow_the_design(halo):
    assert SCENARIO_CLASS == DESIGN_CLASSES
    for name, class_id in DESIGN_CLASSES.items():
        assert SCENARIOS[class_id] == name
        assert draw_scenario(name, halo, rng=0).class_id == class_id


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_same_map_and_different_seeds_differ(scenario):
    request = MapRequest("Elliptical NFW", 3e12, 150.0, 0.2, 40.0, grid_size=64, scenario=scenario, seed=123)
    first, again = generate_map(request), generate_map(request)
    np.testing.assert_array_equal(first.convergence, again.convergence)
    assert first.scenario.draws == again.scenario.draws
    other = generate_map(dataclasses.replace(request, seed=124))
    assert not np.array_equal(first.convergence, other.convergence)


def test_batches_are_reproducible_and_use_the_design_class_ids():
    """A batch map with class id k equals generate_map with DESIGN's scenario k, twice over."""
    seeds = np.array([5, 6, 7])
    class_ids = np.array([0, 1, 2])
    hosts = HostBatch(np.full(3, 4e12), np.full(3, 200.0), np.full(3, 0.25), np.full(3, 10.0), class_ids, seeds)
    first = generate_batch(hosts, grid_size=32, dtype=torch.float64)
    np.testing.assert_array_equal(first.numpy(), generate_batch(hosts, grid_size=32, dtype=torch.float64).numpy())
    for name, class_id in DESIGN_CLASSES.items():
        seed = int(seeds[class_id])
        request = MapRequest("Elliptical NFW", 4e12, 200.0, 0.25, 10.0, grid_size=32, scenario=name, seed=seed)
        np.testing.assert_allclose(first[class_id].numpy(), generate_map(request).convergence, rtol=1e-12)


def test_cdm_has_more_small_subhalos_than_wdm(populations, halo):
    cdm_mean, cdm_error = mean_and_error(small_counts(populations["CDM"], halo))
    wdm_mean, wdm_error = mean_and_error(small_counts(populations["WDM"], halo))
    assert cdm_mean - wdm_mean > 5 * math.hypot(cdm_error, wdm_error)
    # Both agree with the documented recipes in expectation.
    assert abs(cdm_mean - expected_small_count(lambda lo, hi: mass_function_integral(0.0, lo, hi))) < 5 * cdm_error
    assert abs(wdm_mean - expected_small_count(wdm_survival_average)) < 5 * wdm_error


@pytest.mark.parametrize("scenario", ["CDM", "SIDM"])
def test_subhalo_mass_fraction_is_in_the_documented_range(populations, halo, scenario):
    """The parent fraction f ~ U(1 %, 5 %) and the realised mass fraction averages E[f] = 3 %."""
    draws = populations[scenario]
    parent = np.array([d.draws["subhalo_fraction_parent"] for d in draws])
    low, high = SUBHALO_FRACTION_RANGE
    assert np.all((parent >= low) & (parent <= high))
    realised, error = mean_and_error([d.subhalos.mass.sum() / halo.M_vir for d in draws])
    assert low < realised < high
    assert abs(realised - (low + high) / 2) < 5 * error
    masses = np.concatenate([d.subhalos.mass for d in draws]) / halo.M_vir
    assert masses.min() >= SUBHALO_MASS_RANGE[0] and masses.max() <= SUBHALO_MASS_RANGE[1]


def test_core_radii_and_half_mode_masses_follow_their_documented_distributions(populations):
    """SIDM alpha = r_c / r_s ~ U(0.1, 0.5); WDM log10(m_hm / M_host) ~ U(-2.5, -1.5)."""
    for values, (low, high) in (
        ([d.core_fraction for d in populations["SIDM"]], SIDM_CORE_RANGE),
        ([math.log10(d.draws["half_mode_mass_ratio"]) for d in populations["WDM"]], WDM_HALF_MODE_LOG10_RANGE),
    ):
        values = np.asarray(values)
        assert np.all((values >= low) & (values <= high))
        mean, error = mean_and_error(values)
        assert abs(mean - (low + high) / 2) < 5 * error
        assert np.ptp(values) > 0.9 * (high - low)  # the whole range is used


def test_subhalo_positions_follow_the_host(populations, halo):
    """Subhalos sit on the host's isodensity ellipses with radii following its projected mass inside r_200:
    the fraction with xi < r_s is (h(1) - h(0)) / (h(c) - h(0))."""
    profile = EllipticalNFW.from_halo(halo, 0.3, 25.0)
    xi = np.concatenate([profile.elliptical_radius(d.subhalos.x, d.subhalos.y) for d in populations["CDM"]])
    inside = (xi < halo.r_s).astype(float)
    h0, h1, hc = nfw_enclosed(np.array([1e-4, 1.0, halo.concentration]))
    fraction, error = mean_and_error(inside)
    assert abs(fraction - (h1 - h0) / (hc - h0)) < 5 * error
    assert xi.max() <= halo.r200 * (1 + 1e-12)


def test_sidm_centre_is_flatter_than_the_cdm_cusp(populations, halo):
    """Same host: inside the core the cored (SIDM) kappa is nearly flat while the cusp keeps rising."""
    cusp = host_profile("Elliptical NFW", halo, 0.3, 25.0)
    radii = np.array([0.01, 0.02, 0.5]) * halo.r_s
    cusp_kappa = cusp.convergence(radii, np.zeros(3))
    cusp_slope = math.log(cusp_kappa[1] / cusp_kappa[0]) / math.log(2.0)
    for draw in populations["SIDM"][:20]:
        cored = host_profile("Elliptical NFW", halo, 0.3, 25.0, core_fraction=draw.core_fraction)
        kappa = cored.convergence(radii, np.zeros(3))
        slope = math.log(kappa[1] / kappa[0]) / math.log(2.0)
        assert abs(slope) < 0.1 * abs(cusp_slope)
        assert kappa[0] / kappa[2] < 0.5 * cusp_kappa[0] / cusp_kappa[2]
        # and the generated SIDM map is that cored host (plus subhalos, none of which is negative)
    request = MapRequest("Elliptical NFW", halo.M_vir, halo.r_s, 0.3, 25.0, grid_size=64, scenario="SIDM", seed=3)
    result = generate_map(request)
    host_only = host_profile("Elliptical NFW", halo, 0.3, 25.0, core_fraction=result.scenario.core_fraction)
    assert np.all(result.convergence >= host_only.convergence_map(64) * (1 - 1e-12))


def test_cdm_and_wdm_hosts_are_cusps(halo):
    for name in ("CDM", "WDM"):
        assert draw_scenario(name, halo, rng=1).core_fraction is None
