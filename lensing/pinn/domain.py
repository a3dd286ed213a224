"""Where the PINN was trained and measured, and which of a map's inputs or estimates lie outside it.

The model card's accuracy and coverage hold for maps like the training maps: hosts in the box of
`lensing.limits` (M_vir, r_s, e), the recipe's geometries (field of view, redshifts), noise up to its
largest sigma, halos at most `max_offset` of the field off the map centre. Elsewhere the network
extrapolates (a realistic galaxy-scale halo, r_s below 50 kpc, is the common case), and its intervals are
not calibrated there. Each result names what lies outside, so that nobody reads the card's figures for it.
The estimates are checked, not the unknown truths: a map whose halo sits on the edge of the box can be
reported outside by its estimate's scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cosmology import DEFAULT_Z_LENS, DEFAULT_Z_SOURCE, MapGeometry
from ..grid import DEFAULT_FOV_KPC
from ..limits import ELLIPTICITY, MASS, SCALE_RADIUS, Range
from .data import MIN_REDSHIFT_GAP, DataRecipe


@dataclass(frozen=True)
class TrainingDomain:
    """The box, geometries, noise and offsets of the training maps (from the model card's data recipe)."""

    M_vir: Range
    r_s: Range
    ellipticity: Range
    fov_kpc: Range
    z_lens: Range
    z_source_max: float
    min_redshift_gap: float  # z_source - z_lens
    noise_sigma_max: float  # per pixel, at the network's input resolution
    max_offset: float  # per axis, in units of the field of view

    @classmethod
    def from_recipe(cls, recipe: DataRecipe) -> TrainingDomain:
        """Most maps have the default geometry, the rest the recipe's random ones: the union of both."""
        fov = (min(recipe.fov_range[0], DEFAULT_FOV_KPC), max(recipe.fov_range[1], DEFAULT_FOV_KPC))
        z_lens = (min(recipe.z_lens_range[0], DEFAULT_Z_LENS), max(recipe.z_lens_range[1], DEFAULT_Z_LENS))
        return cls(
            M_vir=MASS, r_s=SCALE_RADIUS, ellipticity=ELLIPTICITY, fov_kpc=Range(*fov, "kpc"), z_lens=Range(*z_lens),
            z_source_max=max(recipe.z_source_max, DEFAULT_Z_SOURCE),
            min_redshift_gap=min(MIN_REDSHIFT_GAP, DEFAULT_Z_SOURCE - DEFAULT_Z_LENS),
            noise_sigma_max=recipe.noise_range[1], max_offset=recipe.max_offset,
        )

    @classmethod
    def from_card(cls, card: dict) -> TrainingDomain:
        return cls.from_recipe(DataRecipe.from_dict(card.get("data_recipe", {})))

    def describe(self) -> dict[str, str]:
        """The domain in words, one entry per checked name (what GET /api/v1/models reports)."""
        return {
            "M_vir": self.M_vir.text(), "r_s": self.r_s.text(), "ellipticity": self.ellipticity.text(),
            "center": f"at most {self.max_offset:.0%} of the field of view per axis from the map centre",
            "fov_kpc": self.fov_kpc.text(), "z_lens": self.z_lens.text(),
            "z_source": f"up to {self.z_source_max:g}, at least {self.min_redshift_gap:g} above z_lens",
            "noise_sigma": f"up to {self.noise_sigma_max:g} per pixel at the network's input resolution",
        }

    def geometry_outside(self, geometry: MapGeometry) -> dict[str, str]:
        """{input name: why} for a geometry the training maps never had (empty when they had it)."""
        outside = {}
        if geometry.fov_kpc not in self.fov_kpc:
            outside["fov_kpc"] = f"field of view {geometry.fov_kpc:g} kpc; trained on {self.fov_kpc.text()}"
        if geometry.z_lens not in self.z_lens:
            outside["z_lens"] = f"z_lens {geometry.z_lens:g}; trained on {self.z_lens.text()}"
        gap = geometry.z_source - geometry.z_lens
        if geometry.z_source > self.z_source_max or gap < self.min_redshift_gap - 1e-9:
            outside["z_source"] = (f"z_source {geometry.z_source:g}; trained on z_source up to {self.z_source_max:g} "
                                   f"and at least {self.min_redshift_gap:g} above z_lens")
        return outside

    def outside(self, values: dict[str, np.ndarray], geometry: MapGeometry, sigma_at_input: np.ndarray
                ) -> list[dict[str, str]]:
        """Per map, {name: why} for each estimate (M_vir, r_s, ellipticity, centre) or input (geometry,
        noise sigma at the network's resolution) outside the training maps' range; empty inside."""
        shared = self.geometry_outside(geometry)
        limit = self.max_offset * geometry.fov_kpc
        results = []
        for k in range(len(sigma_at_input)):
            outside = dict(shared)
            for name, box in (("M_vir", self.M_vir), ("r_s", self.r_s), ("ellipticity", self.ellipticity)):
                value = float(values[name][k])
                if value not in box:
                    outside[name] = f"estimate {f'{value:.3g} {box.unit}'.rstrip()}; trained on {box.text()}"
            for name in ("center_x_kpc", "center_y_kpc"):
                value = float(values[name][k])
                if abs(value) > limit:
                    outside[name] = (f"estimate {value:.3g} kpc from the map centre; trained on halos at most "
                                     f"{limit:.3g} kpc ({self.max_offset:.0%} of the field) off it")
            if sigma_at_input[k] > self.noise_sigma_max:
                outside["noise_sigma"] = (f"{sigma_at_input[k]:.3g} per pixel at the network's resolution; "
                                          f"trained on up to {self.noise_sigma_max:g}")
            results.append(outside)
        return results
