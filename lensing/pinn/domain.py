"""Where the PINN was trained, in its own terms, and which of a result's estimates or inputs lie outside.

The network sees a map and its noise, never the field of view or the redshifts: what it estimates is
theta (kappa_s, r_s as a fraction of the field, e, the centre as a fraction of the field), and any
geometry whose map looks like a training map is inside. The domain is the training box at the default
geometry in those terms (the bulk of the training maps; the random geometries of a quarter of them add
thin tails that the network did not learn): r_s between 0.05 and 0.5 of the field, kappa_s over the box
(M_vir, r_s) there, e over the recipe's range (the API box's 0 to 0.5 for the shipped weights), halos at
most `max_offset` of the field off centre, and noise up to the recipe's largest sigma at the network's
input resolution. Measured (`lensing evaluate`, the galaxy-halo
sets): Duffy galaxy halos in a 1000 kpc field (r_s 0.01-0.05 of it; 95 % flagged outside) come out 0.13 dex
off in M_vir with 68 % intervals that cover 8 %; the same halos in a 250 kpc field (99 % inside) are as
accurate as the headline set.
The estimates are checked, not the unknown truths, so a halo on the domain's edge can be reported
outside by its estimate's scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cosmology import lens_geometry
from ..grid import DEFAULT_FOV_KPC
from ..limits import MASS, SCALE_RADIUS, Range
from ..synthetic import kappa_s_of
from .data import DataRecipe


@dataclass(frozen=True)
class TrainingDomain:
    """The training maps' range of theta, and their largest noise and offset (from the card's data recipe)."""

    kappa_s: Range
    r_s_fraction: Range  # r_s / field of view
    ellipticity: Range
    max_offset: float  # per axis, in units of the field of view
    noise_sigma_max: float  # per pixel, at the network's input resolution
    input_size: int  # pixels a side of the training maps (the network's input)

    @classmethod
    def from_recipe(cls, recipe: DataRecipe) -> TrainingDomain:
        mass = np.geomspace(*MASS.endpoints, 31)[:, None]
        r_s = np.geomspace(*SCALE_RADIUS.endpoints, 31)[None, :]
        kappa_s = kappa_s_of(mass * np.ones_like(r_s), r_s * np.ones_like(mass), lens_geometry())
        return cls(
            kappa_s=Range(float(kappa_s.min()), float(kappa_s.max())),
            r_s_fraction=Range(SCALE_RADIUS.low / DEFAULT_FOV_KPC, SCALE_RADIUS.high / DEFAULT_FOV_KPC),
            ellipticity=Range(*recipe.ellipticity_range), max_offset=recipe.max_offset,
            noise_sigma_max=recipe.noise_range[1], input_size=recipe.grid_size,
        )

    @classmethod
    def from_card(cls, card: dict) -> TrainingDomain:
        return cls.from_recipe(DataRecipe.from_dict(card.get("data_recipe", {})))

    def describe(self) -> dict[str, str]:
        """The domain in words, one entry per checked name (what GET /api/v1/models and the card report)."""
        pixels = f"{self.r_s_fraction.low * self.input_size:.2g} to {self.r_s_fraction.high * self.input_size:.2g}"
        return {
            "kappa_s": f"{self.kappa_s.low:.3g} to {self.kappa_s.high:.3g}",
            "r_s": f"{self.r_s_fraction.low:g} to {self.r_s_fraction.high:g} of the field of view "
                   f"({pixels} pixels of the network's {self.input_size}-pixel input)",
            "ellipticity": self.ellipticity.text(),
            "center": f"at most {self.max_offset:.0%} of the field of view per axis from the map centre",
            "noise_sigma": f"up to {self.noise_sigma_max:g} per pixel at the network's input resolution",
            "geometry": "any field of view and redshifts: the network sees only the map",
        }

    def fitting_fov_kpc(self, r_s_kpc: float) -> float:
        """The field of view that puts r_s at the middle (geometric mean) of the trained fractions: what to
        render or crop a map to when its halo is too small or too large for its field."""
        return r_s_kpc / math.sqrt(self.r_s_fraction.low * self.r_s_fraction.high)

    def outside(self, theta: np.ndarray, fov_kpc: float, sigma_at_input: np.ndarray) -> list[dict[str, str]]:
        """Per map, {name: why} for each estimate in theta (B, 6) or noise sigma (at the network's resolution)
        outside the training maps' range; empty inside."""
        results = []
        for k in range(len(theta)):
            log_kappa_s, log_r_s, e1, e2, x, y = (float(v) for v in theta[k])
            outside = {}
            kappa_s, fraction = 10.0**log_kappa_s, 10.0**log_r_s
            if kappa_s not in self.kappa_s:
                outside["kappa_s"] = (f"estimate {kappa_s:.3g}; trained on {self.kappa_s.low:.3g} to "
                                      f"{self.kappa_s.high:.3g}")
            if fraction not in self.r_s_fraction:
                outside["r_s"] = (f"estimate {fraction * fov_kpc:.3g} kpc, {fraction:.3g} of the {fov_kpc:g} kpc "
                                  f"field; trained on {self.r_s_fraction.low:g} to {self.r_s_fraction.high:g} of it: "
                                  f"a field of about {self.fitting_fov_kpc(fraction * fov_kpc):.3g} kpc would hold it")
            ellipticity = math.hypot(e1, e2)
            if ellipticity not in self.ellipticity:
                outside["ellipticity"] = f"estimate {ellipticity:.3g}; trained on {self.ellipticity.text()}"
            for name, offset in (("center_x_kpc", x), ("center_y_kpc", y)):
                if abs(offset) > self.max_offset:
                    outside[name] = (f"estimate {offset * fov_kpc:.3g} kpc, {abs(offset):.0%} of the field from its "
                                     f"centre; trained on at most {self.max_offset:.0%}")
            if sigma_at_input[k] > self.noise_sigma_max:
                outside["noise_sigma"] = (f"{sigma_at_input[k]:.3g} per pixel at the network's resolution; "
                                          f"trained on up to {self.noise_sigma_max:g}")
            results.append(outside)
        return results
