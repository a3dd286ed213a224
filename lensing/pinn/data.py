"""On-the-fly training and evaluation data: host draws over the box, rendered by the batched generator.

Every batch is a pure function of (seed, batch index), so training is reproducible and a held-out set
is simply a seed never used in training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..cosmology import LensGeometry, lens_geometry
from ..grid import DEFAULT_FOV_KPC
from ..limits import ELLIPTICITY
from ..noise import estimate_noise_sigma
from ..scenarios import NONE_CLASS
from ..synthetic import HostBatch, draw_batch_scenarios, generate_batch, sample_hosts
from .encoding import theta_from_hosts

MIN_REDSHIFT_GAP = 0.4  # z_source - z_lens of the random geometries


@dataclass(frozen=True)
class DataRecipe:
    """What the maps look like: scenarios, noise, off-centre halos and geometry variation."""

    grid_size: int = 64
    scenario_fraction: float = 0.75
    noisy_fraction: float = 0.5
    noise_range: tuple[float, float] = (1e-3, 4e-2)  # sigma_kappa, log-uniform
    offset_fraction: float = 0.5  # maps whose halo is off the map centre
    max_offset: float = 0.1  # per axis, in units of the field of view (uniform)
    told_noise_fraction: float = 0.5  # maps whose true sigma the network is told (else: the map's estimate)
    other_geometry_fraction: float = 0.25
    z_lens_range: tuple[float, float] = (0.2, 0.8)
    z_source_max: float = 3.0
    fov_range: tuple[float, float] = (500.0, 2000.0)  # kpc, log-uniform
    # host e, uniform. Past the API box's 0.5 (tried: 0.7), a halo near 0.5 is no longer at the edge of what
    # the network has seen, where a noisy map's estimate is pulled inwards (docs/design.md section 5)
    ellipticity_range: tuple[float, float] = ELLIPTICITY.endpoints

    @classmethod
    def from_dict(cls, fields: dict) -> DataRecipe:
        """A recipe from its YAML / model-card form (ranges as lists)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        return cls(**values)

    def within_api_box(self) -> DataRecipe:
        """The same mixture with hosts over the API box only (e up to 0.5): the maps the calibration is for.
        Where training reaches past the box, fitting k on maps past it too widens every interval for the
        halos that synthetic maps, sweeps and the evaluation sets draw (a network trained to e = 0.7 and
        calibrated on its whole recipe: 61 of the 80 coverage figures within the goal, on the box: 72)."""
        return replace(self, ellipticity_range=ELLIPTICITY.endpoints)


@dataclass
class MapBatch:
    """Maps with their truths. `scenario` is the class id (CLASS_NAMES): NONE_CLASS for a smooth host and
    for a draw that leaves no trace on the map (`ScenarioRealisation.substructure_in_field`);
    `drawn_scenario` is the scenario drawn (-1: none)."""

    maps: torch.Tensor  # (B, N, N) float32
    theta: torch.Tensor  # (B, 6)
    scenario: torch.Tensor  # (B,) long
    drawn_scenario: np.ndarray  # (B,)
    hosts: HostBatch
    fov_kpc: np.ndarray  # (B,)
    noise_sigma: np.ndarray  # (B,) the truth
    told_noise_sigma: np.ndarray  # (B,) what the network is given: the truth or the map's own estimate
    geometries: list[LensGeometry]  # one per map

    def __len__(self) -> int:
        return self.maps.shape[0]


def _random_geometry(rng: np.random.Generator, recipe: DataRecipe) -> tuple[LensGeometry, float]:
    z_lens = rng.uniform(*recipe.z_lens_range)
    z_source = rng.uniform(z_lens + MIN_REDSHIFT_GAP, recipe.z_source_max)
    fov = float(np.exp(rng.uniform(*np.log(recipe.fov_range))))
    return lens_geometry(round(z_lens, 4), round(z_source, 4)), fov


def make_batch(
    size: int,
    rng: np.random.Generator,
    recipe: DataRecipe,
    geometry: LensGeometry | None = None,
    fov_kpc: float | None = None,
    noise_sigma: float | None = None,
    scenario_fraction: float | None = None,
    max_offset: float | None = None,
    hosts: HostBatch | None = None,
) -> MapBatch:
    """A batch of maps. Fixed geometry/fov/noise/scenario_fraction override the recipe's random draws;
    a fixed `max_offset` puts every halo uniformly within +-max_offset of the field (0: centred); `hosts`
    (of `size` maps) replaces the draw over the box."""
    frac = recipe.scenario_fraction if scenario_fraction is None else scenario_fraction
    if hosts is None:
        hosts = sample_hosts(size, rng, scenario_probability=frac, ellipticity_range=recipe.ellipticity_range)
    if max_offset is None:
        shifted = rng.random(size) < recipe.offset_fraction
        offsets = np.where(shifted, rng.uniform(-recipe.max_offset, recipe.max_offset, (2, size)), 0.0)
    else:
        offsets = rng.uniform(-max_offset, max_offset, (2, size))
    if noise_sigma is None:
        noisy = rng.random(size) < recipe.noisy_fraction
        low, high = np.log(recipe.noise_range)
        sigma = np.where(noisy, np.exp(rng.uniform(low, high, size)), 0.0)
    else:
        sigma = np.full(size, float(noise_sigma))
    if geometry is None:
        other = rng.random() < recipe.other_geometry_fraction
        geometry, fov = _random_geometry(rng, recipe) if other else (lens_geometry(), DEFAULT_FOV_KPC)
    else:
        fov = float(fov_kpc or DEFAULT_FOV_KPC)
    hosts.center_x_kpc, hosts.center_y_kpc = offsets * fov
    draws = draw_batch_scenarios(hosts, geometry)
    maps = generate_batch(hosts, recipe.grid_size, fov, geometry, draws=draws)
    noise = torch.as_tensor(rng.standard_normal(maps.shape), dtype=maps.dtype)
    maps = maps + noise * torch.as_tensor(sigma, dtype=maps.dtype)[:, None, None]
    theta = torch.as_tensor(theta_from_hosts(hosts, geometry, fov), dtype=torch.float32)
    visible = np.array([k in draws and draws[k].substructure_in_field(fov) for k in range(size)], dtype=bool)
    scenario = torch.as_tensor(np.where(visible, hosts.scenario, NONE_CLASS), dtype=torch.long)
    told = sigma.copy()
    guessed = rng.random(size) >= recipe.told_noise_fraction  # these maps get their own estimate
    if guessed.any():
        told[guessed] = estimate_noise_sigma(maps.numpy()[guessed])
    return MapBatch(maps, theta, scenario, hosts.scenario.copy(), hosts, np.full(size, fov), sigma, told,
                    [geometry] * size)
