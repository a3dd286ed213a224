"""On-the-fly training and evaluation data: host draws over the box, rendered by the batched generator.

Every batch is a pure function of (seed, batch index), so training is reproducible and a held-out set
is simply a seed never used in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..cosmology import LensGeometry, lens_geometry
from ..grid import DEFAULT_FOV_KPC
from ..synthetic import NO_SCENARIO, HostBatch, generate_batch, sample_hosts
from .encoding import theta_from_hosts


@dataclass(frozen=True)
class DataRecipe:
    """What the maps look like: scenarios, noise and geometry variation."""

    grid_size: int = 64
    scenario_fraction: float = 0.5
    noisy_fraction: float = 0.25
    noise_range: tuple[float, float] = (1e-3, 2e-2)  # sigma_kappa, log-uniform
    other_geometry_fraction: float = 0.25
    z_lens_range: tuple[float, float] = (0.2, 0.8)
    z_source_max: float = 3.0
    fov_range: tuple[float, float] = (500.0, 2000.0)  # kpc, log-uniform

    @classmethod
    def from_dict(cls, fields: dict) -> DataRecipe:
        """A recipe from its YAML / model-card form (ranges as lists)."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        return cls(**values)


@dataclass
class MapBatch:
    """Maps with their truths. `scenario` is -1 for smooth hosts."""

    maps: torch.Tensor  # (B, N, N) float32
    theta: torch.Tensor  # (B, 4)
    scenario: torch.Tensor  # (B,) long
    hosts: HostBatch
    fov_kpc: np.ndarray  # (B,)
    noise_sigma: np.ndarray  # (B,)
    geometries: list[LensGeometry]  # one per map

    def __len__(self) -> int:
        return self.maps.shape[0]


def _random_geometry(rng: np.random.Generator, recipe: DataRecipe) -> tuple[LensGeometry, float]:
    z_lens = rng.uniform(*recipe.z_lens_range)
    z_source = rng.uniform(z_lens + 0.4, recipe.z_source_max)
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
) -> MapBatch:
    """A batch of maps. Fixed geometry/fov/noise/scenario_fraction override the recipe's random draws."""
    frac = recipe.scenario_fraction if scenario_fraction is None else scenario_fraction
    hosts = sample_hosts(size, rng, scenario_probability=frac)
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
    maps = generate_batch(hosts, recipe.grid_size, fov, geometry)
    noise = torch.as_tensor(rng.standard_normal(maps.shape), dtype=maps.dtype)
    maps = maps + noise * torch.as_tensor(sigma, dtype=maps.dtype)[:, None, None]
    theta = torch.as_tensor(theta_from_hosts(hosts, geometry, fov), dtype=torch.float32)
    scenario = torch.as_tensor(np.where(hosts.scenario >= 0, hosts.scenario, NO_SCENARIO), dtype=torch.long)
    return MapBatch(maps, theta, scenario, hosts, np.full(size, fov), sigma, [geometry] * size)
