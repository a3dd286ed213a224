"""How much of the scenario oracle's CDM-vs-WDM accuracy survives the 64-pixel map (docs/design.md section 4).

`scenario_oracle.py` gives the Bayes rule the exact mass of every subhalo in the field. A map shows each
subhalo as a bump whose pixel values depend on where it falls inside its pixel, and neighbouring bumps
blend. This script applies the same rule to what clean 64 x 64 maps of the default 1000-kpc field show,
on the oracle's own draws (same seed):

* exact host: the map of the subhalos alone (the host removed exactly, as no real fit can). Every local
  maximum is one detection; its mass is the sum of the 3 x 3 pixels around it, divided by the median
  ratio of that sum to the true mass of an isolated subhalo (measured here, 300 subhalos per mass).
* fitted host (`--fitted-host N`, the first N draws; ~0.3 s a map on 2 cores): the full map minus the host the
  shipped PINN estimates and Levenberg-Marquardt refines, fitted again with the pixels around residual
  peaks above FITTED_HOST_THRESHOLD left out, `--fit-rounds` fits in all (a least-squares host bends
  towards the subhalos, and its misfit reads as more peaks); the host mass, shape and centre come from
  that fit. The network's own CDM-vs-WDM call on the same maps is reported beside it.

`--exclude-px R` ignores detections within R pixels of the host centre and gives the rule the share of
subhalos outside that disc, for all three (the fitted host is least certain on its cusp). Detected
masses outside the recipe's range are clipped to it. What this measures is a simple peak count: better
photometry could do somewhat better than the exact-host figure, and a real host fit does worse.

    python docs/model/scenario_map_bound.py [N_DRAWS] [--fitted-host N] [--exclude-px R] [--fit-rounds K]

30,000 draws take ~3.5 minutes; the figures docs/design.md quotes: `30000` and
`30000 --fitted-host 3000 --exclude-px 1.5` (18 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenario_oracle import SEED, BayesRule, in_field

from lensing import scenarios
from lensing.cosmology import MapGeometry, lens_geometry
from lensing.grid import DEFAULT_FOV_KPC
from lensing.halo import HaloParameters
from lensing.render import add_subhalos
from lensing.synthetic import HostBatch, generate_batch, sample_hosts

GRID = 64
PIXEL_KPC = DEFAULT_FOV_KPC / GRID
CALIBRATION_MASSES = np.geomspace(*scenarios.SUBHALO_MASS_RANGE, 9)  # in units of M_host
CALIBRATION_DRAWS = 300
FITTED_HOST_THRESHOLD = 3e-5  # kappa: fainter residual peaks are mostly the fitted host's own misfit
FIT_STEPS = 20
MC_SAMPLES = 20


@dataclass(frozen=True)
class Detections:
    """Local maxima of a map: 3 x 3 pixel sums (kappa) and positions (pixels, from the map centre)."""

    sums: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def outside(self, centre_px: tuple[float, float], radius_px: float) -> np.ndarray:
        """The sums of the detections farther than `radius_px` from `centre_px`."""
        return self.sums[np.hypot(self.x - centre_px[0], self.y - centre_px[1]) > radius_px]


def subhalo_map(subhalos: scenarios.Subhalos) -> np.ndarray:
    """The convergence of `subhalos` alone on the recipe's grid (float64)."""
    fov = DEFAULT_FOV_KPC
    index = torch.zeros(len(subhalos), dtype=torch.long)
    return add_subhalos(torch.zeros(1, GRID, GRID, dtype=torch.float64), index, torch.tensor(subhalos.x / fov),
                        torch.tensor(subhalos.y / fov), torch.tensor(subhalos.kappa_s),
                        torch.tensor(subhalos.r_s / fov), torch.tensor(subhalos.tau))[0].numpy()


def peak_pixels(maps: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """(B, 1, N, N) maps -> bool: pixels that are the maximum of their 3 x 3 neighbourhood and above `threshold`."""
    return (maps == F.max_pool2d(maps, 3, 1, 1)) & (maps > threshold)


def local_maxima(kappa: np.ndarray, threshold: float = 0.0) -> Detections:
    t = torch.as_tensor(kappa)[None, None]
    is_peak = peak_pixels(t, threshold)[0, 0].numpy()
    sums = (F.avg_pool2d(t, 3, 1, 1, count_include_pad=False) * 9)[0, 0].numpy()
    row, col = np.nonzero(is_peak)
    return Detections(sums[row, col], col - (GRID - 1) / 2, row - (GRID - 1) / 2)


class PeakPhotometry:
    """Subhalo masses (units of M_host) from 3 x 3 peak sums, calibrated on isolated subhalos of a
    reference host: the ratio of the sum to the true mass is 0.43-0.59 across the mass range."""

    def __init__(self, rng: np.random.Generator, geometry) -> None:
        self.pixel_mass = PIXEL_KPC**2 * geometry.sigma_crit  # Msun per unit kappa in one pixel
        host = HaloParameters(1e12, 30.0, geometry)
        half = 0.3 * DEFAULT_FOV_KPC
        ratios = []
        for mass_ratio in CALIBRATION_MASSES:
            measured = []
            for _ in range(CALIBRATION_DRAWS):
                mass = np.array([mass_ratio * host.M_vir])
                kappa_s, r_s, tau = scenarios.subhalo_structure(mass, rng.uniform(20.0, 300.0, 1), host)
                one = scenarios.Subhalos(rng.uniform(-half, half, 1), rng.uniform(-half, half, 1), mass,
                                         kappa_s, r_s, tau)
                measured.append(local_maxima(subhalo_map(one)).sums.max() * self.pixel_mass / mass[0])
            ratios.append(float(np.median(measured)))
        self.ratios = np.array(ratios)

    def mass_ratios(self, sums: np.ndarray, host_mass: float) -> np.ndarray:
        measured = sums[sums > 0] * self.pixel_mass / host_mass
        ratio = np.interp(np.log(measured), np.log(CALIBRATION_MASSES * self.ratios), self.ratios)
        return np.clip(measured / ratio, *scenarios.SUBHALO_MASS_RANGE)


def share_outside(halo: HaloParameters, ellipticity: float, angle_deg: float, rng: np.random.Generator,
                  radius_kpc: float) -> float:
    """Share of this host's subhalo positions inside the field and farther than `radius_kpc` from its
    centre (with radius 0, the oracle's `fraction_in_field`, draw for draw)."""
    radius = scenarios.sample_projected_radii(rng, 4000, halo.r_s, halo.r200)
    angle = rng.uniform(0.0, 2.0 * math.pi, radius.size)
    x, y = scenarios.place_on_ellipses(radius, angle, ellipticity, angle_deg)
    return float(np.mean(in_field(x, y) & (np.hypot(x, y) > radius_kpc)))


def fit_hosts(predictor, maps: np.ndarray, exclude_px: float, rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual maps after the robust host fit, the fitted theta and the network's P(WDM) / P(CDM + WDM)."""
    from lensing.pinn.encoding import theta_from_hosts
    from lensing.pinn.physics import render_theta
    from lensing.pinn.refine import refine_theta

    geometry = MapGeometry()
    network = predictor.predict_batch(maps, geometry, MC_SAMPLES, seed=list(range(len(maps))))
    says_wdm = network.class_probs[:, 1] / network.class_probs[:, :2].sum(1)
    values = network.values
    hosts = HostBatch(values["M_vir"], values["r_s"], values["ellipticity"], values["position_angle"],
                      np.full(len(maps), -1), np.zeros(len(maps), dtype=np.int64), values["center_x_kpc"],
                      values["center_y_kpc"])
    estimate = torch.as_tensor(theta_from_hosts(hosts, geometry.lens, geometry.fov_kpc))
    target, mask = torch.as_tensor(maps), None
    pixel = torch.arange(GRID, dtype=torch.float64) - (GRID - 1) / 2
    for _ in range(rounds):
        estimate, _ = refine_theta(estimate, target, steps=FIT_STEPS, mask=mask)
        residual = target - render_theta(estimate, GRID)
        near_peak = F.max_pool2d(peak_pixels(residual[:, None], FITTED_HOST_THRESHOLD).double(), 3, 1, 1)
        centre = estimate[:, 4:] * GRID  # pixels from the map centre
        cusp = torch.hypot(pixel[None, None, :] - centre[:, 0, None, None],
                           pixel[None, :, None] - centre[:, 1, None, None]) <= exclude_px
        mask = ~(near_peak[:, 0].bool() & ~cusp)  # the cusp always constrains the host
    return residual.numpy(), estimate.numpy(), says_wdm


def main(n_draws: int, fitted_host: int, exclude_px: float, fit_rounds: int = 3) -> dict:
    from lensing.pinn.encoding import physical_from_theta

    rng = np.random.default_rng(SEED)
    geometry = lens_geometry()
    hosts = sample_hosts(n_draws, rng)
    rule = BayesRule()
    photometry = PeakPhotometry(np.random.default_rng(SEED + 1), geometry)
    oracle, exact_host, fitted_maps, truths = [], [], [], []
    for k in range(n_draws):
        halo = HaloParameters(float(hosts.M_vir[k]), float(hosts.scale_radius[k]), geometry)
        e, angle = float(hosts.ellipticity[k]), float(hosts.position_angle[k])
        name = "WDM" if k % 2 == 1 else "CDM"
        subhalos = scenarios.draw_scenario(name, halo, e, angle, rng).subhalos
        share = share_outside(halo, e, angle, rng, exclude_px * PIXEL_KPC)
        counted = in_field(subhalos.x, subhalos.y) & (np.hypot(subhalos.x, subhalos.y) > exclude_px * PIXEL_KPC)
        oracle.append(rule.says_wdm(subhalos.mass[counted] / halo.M_vir, share) == (name == "WDM"))
        sums = local_maxima(subhalo_map(subhalos)).outside((0.0, 0.0), exclude_px) if len(subhalos) else np.zeros(0)
        exact_host.append(rule.says_wdm(photometry.mass_ratios(sums, halo.M_vir), share) == (name == "WDM"))
        if k < fitted_host:  # the clean map of the recipe: this host and this draw, in float64
            one = hosts.subset([k])
            one.scenario[:] = scenarios.SCENARIO_CLASS[name]
            draw = scenarios.ScenarioRealisation(name, None, subhalos)
            fitted_maps.append(generate_batch(one, GRID, geometry=geometry, dtype=torch.float64,
                                              draws={0: draw})[0].numpy())
            truths.append(name == "WDM")
    figures = {"n_draws": n_draws, "exclude_px": exclude_px, "fit_rounds": fit_rounds,
               **summary("oracle", oracle), **summary("exact_host_peaks", exact_host),
               "exact_host_minus_oracle": float(np.mean(exact_host) - np.mean(oracle)),
               "exact_host_minus_oracle_stderr": float(np.std(np.subtract(exact_host, oracle, dtype=float))
                                                       / math.sqrt(n_draws)),
               "photometry_sum_over_mass": [round(r, 3) for r in photometry.ratios]}
    if fitted_maps:
        from lensing.pinn.predictor import Predictor

        predictor = Predictor.from_package("cpu")
        fitted, network = [], []
        fit_rng = np.random.default_rng(SEED + 2)
        for start in range(0, len(fitted_maps), 250):
            residual, theta, says_wdm = fit_hosts(predictor, np.stack(fitted_maps[start:start + 250]), exclude_px,
                                                  fit_rounds)
            fit = physical_from_theta(theta, geometry, DEFAULT_FOV_KPC)
            for j, is_wdm in enumerate(truths[start:start + 250]):
                mass = float(fit["M_vir"][j])
                halo = HaloParameters(mass, float(fit["r_s"][j]), geometry)
                share = share_outside(halo, float(fit["ellipticity"][j]), float(fit["position_angle"][j]), fit_rng,
                                      exclude_px * PIXEL_KPC)
                sums = local_maxima(residual[j], FITTED_HOST_THRESHOLD).outside(tuple(theta[j, 4:] * GRID), exclude_px)
                fitted.append(rule.says_wdm(photometry.mass_ratios(sums, mass), share) == is_wdm)
                network.append((says_wdm[j] > 0.5) == is_wdm)
        figures |= {"fitted_host_n": len(fitted), **summary("fitted_host_peaks", fitted),
                    **summary("network", network)}
    return figures


def summary(name: str, correct: list[bool]) -> dict:
    accuracy = float(np.mean(correct))
    return {f"{name}_cdm_vs_wdm": accuracy, f"{name}_stderr": math.sqrt(accuracy * (1 - accuracy) / len(correct))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_draws", nargs="?", type=int, default=30000)
    parser.add_argument("--fitted-host", type=int, default=0, help="also fit the host of the first N draws")
    parser.add_argument("--exclude-px", type=float, default=0.0, help="ignore detections this close to the host centre")
    parser.add_argument("--fit-rounds", type=int, default=3, help="host fits, each without the peaks the last left")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.n_draws, arguments.fitted_host, arguments.exclude_px, arguments.fit_rounds)))
