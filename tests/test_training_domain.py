"""Each result says whether the map and its estimates lie where the PINN was trained, and names what does not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensing import MapRequest, generate_map
from lensing.pinn.checkpoint import CARD_NAME, PACKAGE_WEIGHTS_DIR
from lensing.pinn.data import DataRecipe
from lensing.pinn.domain import TrainingDomain
from lensing.pinn.predictor import MapGeometry, Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_package(device="cpu")


def domain_of(predictor: Predictor, request: MapRequest, geometry: MapGeometry = MapGeometry(), **options) -> dict:
    result = predictor.predict([generate_map(request).convergence], geometry, mc_samples=10, seed=1, **options)[0]
    domain = result["training_domain"]
    assert domain["inside"] == (domain["outside"] == {})
    return domain


def test_the_domain_is_the_shipped_card_recipe() -> None:
    card = json.loads((PACKAGE_WEIGHTS_DIR / CARD_NAME).read_text())
    recipe = DataRecipe.from_dict(card["data_recipe"])
    domain = TrainingDomain.from_card(card)
    assert (domain.fov_kpc.low, domain.fov_kpc.high) == recipe.fov_range
    assert (domain.z_lens.low, domain.z_lens.high) == recipe.z_lens_range
    assert domain.noise_sigma_max == recipe.noise_range[1] and domain.max_offset == recipe.max_offset
    assert (domain.M_vir.low, domain.M_vir.high, domain.r_s.low, domain.r_s.high) == (1e11, 1e14, 50.0, 500.0)


def test_a_halo_in_the_box_is_inside(predictor: Predictor) -> None:
    request = MapRequest(profile_type="Elliptical NFW", M_vir=3e13, concentration=5.0, ellipticity=0.2,
                         grid_size=64, center_x_kpc=40.0)
    assert domain_of(predictor, request) == {"inside": True, "outside": {}}


def test_a_galaxy_halo_below_the_box_names_r_s(predictor: Predictor) -> None:
    """Duffy et al. (2008) gives a 1e12 Msun halo r_s ~ 33 kpc: realistic, and below the training box."""
    domain = domain_of(predictor, MapRequest(M_vir=1e12, grid_size=64))
    assert list(domain["outside"]) == ["r_s"] and "trained on [50, 500] kpc" in domain["outside"]["r_s"]


def test_geometry_and_noise_outside_the_training_maps_are_named(predictor: Predictor) -> None:
    geometry = MapGeometry(fov_kpc=3000.0, z_lens=1.2, z_source=1.4)
    request = MapRequest(M_vir=5e13, scale_radius=300.0, grid_size=64, fov_kpc=3000.0, z_lens=1.2, z_source=1.4)
    outside = domain_of(predictor, request, geometry)["outside"]
    assert {"fov_kpc", "z_lens", "z_source"} <= set(outside), outside
    noisy = MapRequest(M_vir=3e13, scale_radius=150.0, grid_size=64, noise_sigma=0.08, seed=2)
    assert "noise_sigma" in domain_of(predictor, noisy)["outside"]


def test_noise_is_judged_at_the_network_resolution(predictor: Predictor) -> None:
    """sigma 0.06 per pixel of a 256-px map is 0.015 once shrunk to 64 px: inside the trained 0.04."""
    request = MapRequest(M_vir=3e13, scale_radius=150.0, grid_size=256, seed=3)
    kappa = generate_map(request).convergence + np.random.default_rng(4).normal(0.0, 0.06, (256, 256))
    result = predictor.predict([kappa], MapGeometry(), mc_samples=10, seed=1, noise_sigma=0.06)[0]
    assert "noise_sigma" not in result["training_domain"]["outside"]
