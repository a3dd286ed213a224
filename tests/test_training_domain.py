"""Each result says whether its map and estimates lie where the PINN was trained, and names what does not."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lensing import MapRequest, generate_map
from lensing.cosmology import lens_geometry
from lensing.pinn.checkpoint import CARD_NAME, PACKAGE_WEIGHTS_DIR
from lensing.pinn.data import DataRecipe
from lensing.pinn.domain import TrainingDomain
from lensing.pinn.evaluate import EVALUATION_SETS, run_set
from lensing.pinn.predictor import MapGeometry, Predictor
from lensing.synthetic import kappa_s_of

DOMAIN = TrainingDomain.from_recipe(DataRecipe())


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_package(device="cpu")


def domain_of(predictor: Predictor, request: MapRequest, geometry: MapGeometry = MapGeometry(), **options) -> dict:
    result = predictor.predict([generate_map(request).convergence], geometry, mc_samples=10, seed=1, **options)[0]
    domain = result["training_domain"]
    assert domain["inside"] == (domain["outside"] == {})
    return domain


def theta(kappa_s: float = 0.05, r_s_fraction: float = 0.1, ellipticity: float = 0.2, x: float = 0.0,
          y: float = 0.0) -> np.ndarray:
    return np.array([[np.log10(kappa_s), np.log10(r_s_fraction), ellipticity, 0.0, x, y]])


def test_the_domain_is_the_training_box_at_the_default_geometry_in_the_network_terms() -> None:
    card = json.loads((PACKAGE_WEIGHTS_DIR / CARD_NAME).read_text())
    recipe = DataRecipe.from_dict(card["data_recipe"])
    domain = TrainingDomain.from_card(card)
    assert domain.noise_sigma_max == recipe.noise_range[1] and domain.max_offset == recipe.max_offset
    assert domain.ellipticity.endpoints == recipe.ellipticity_range
    assert (domain.r_s_fraction.low, domain.r_s_fraction.high) == (0.05, 0.5)  # r_s 50-500 kpc of 1000 kpc
    corners = kappa_s_of(np.array([1e11, 1e14]), np.array([500.0, 50.0]), lens_geometry())
    assert (domain.kappa_s.low, domain.kappa_s.high) == pytest.approx(tuple(corners), rel=1e-9)


@pytest.mark.parametrize("estimate, names", [
    (theta(), []),
    (theta(r_s_fraction=0.03), ["r_s"]),
    (theta(r_s_fraction=0.7), ["r_s"]),
    (theta(kappa_s=1e-4), ["kappa_s"]),
    (theta(ellipticity=0.6), ["ellipticity"]),
    (theta(x=0.15, y=-0.12), ["center_x_kpc", "center_y_kpc"]),
])
def test_each_estimate_outside_is_named(estimate: np.ndarray, names: list[str]) -> None:
    assert list(DOMAIN.outside(estimate, 1000.0, np.zeros(1))[0]) == names


def test_noise_is_judged_at_the_network_resolution(predictor: Predictor) -> None:
    """sigma 0.06 per pixel of a 256-px map is 0.015 once shrunk to 64 px: inside the trained 0.04; the same
    sigma on a 64-px map is not."""
    assert list(DOMAIN.outside(theta(), 1000.0, np.array([0.05]))[0]) == ["noise_sigma"]
    request = MapRequest(M_vir=3e13, scale_radius=150.0, grid_size=256, seed=3)
    kappa = generate_map(request).convergence + np.random.default_rng(4).normal(0.0, 0.06, (256, 256))
    result = predictor.predict([kappa], MapGeometry(), mc_samples=10, seed=1, noise_sigma=0.06)[0]
    assert "noise_sigma" not in result["training_domain"]["outside"]


def test_a_halo_in_the_box_is_inside(predictor: Predictor) -> None:
    request = MapRequest(profile_type="Elliptical NFW", M_vir=3e13, concentration=5.0, ellipticity=0.2,
                         grid_size=64, center_x_kpc=40.0)
    assert domain_of(predictor, request) == {"inside": True, "outside": {}}


def test_a_galaxy_halo_is_outside_in_a_wide_field_and_inside_in_a_narrow_one(predictor: Predictor) -> None:
    """Duffy et al. (2008) gives a 1e12 Msun halo r_s ~ 33 kpc: 0.03 of a 1000 kpc field (under the
    training maps' 0.05), 0.13 of a 250 kpc one; the network never sees the field, only the map."""
    wide = domain_of(predictor, MapRequest(M_vir=1e12, grid_size=64))
    assert list(wide["outside"]) == ["r_s"] and "trained on 0.05 to 0.5 of it" in wide["outside"]["r_s"]
    narrow = MapGeometry(fov_kpc=250.0)
    assert domain_of(predictor, MapRequest(M_vir=1e12, grid_size=64, fov_kpc=250.0), narrow)["inside"]


@pytest.mark.parametrize("mass, scale_radius, fov_kpc", [(1e12, None, 1000.0), (1e14, 450.0, 600.0)])
def test_the_field_the_message_suggests_puts_the_halo_inside(predictor: Predictor, mass: float,
                                                             scale_radius: float | None, fov_kpc: float) -> None:
    """A galaxy halo too small for its field and a cluster too large for it: rendered again in the field the
    r_s message names, each is inside."""
    request = MapRequest(M_vir=mass, scale_radius=scale_radius, grid_size=64, fov_kpc=fov_kpc)
    message = domain_of(predictor, request, MapGeometry(fov_kpc=fov_kpc))["outside"]["r_s"]
    suggested = float(re.search(r"a field of about ([0-9.e+]+) kpc would hold it", message).group(1))
    refitted = MapRequest(M_vir=mass, scale_radius=scale_radius, grid_size=64, fov_kpc=suggested)
    assert domain_of(predictor, refitted, MapGeometry(fov_kpc=suggested)) == {"inside": True, "outside": {}}


def test_the_check_separates_the_results_to_trust_from_the_others(predictor: Predictor) -> None:
    """Duffy galaxy halos (1e11 to 3e12 Msun): in a 1000 kpc field their r_s is 0.01-0.05 of it, and the
    results flagged outside miss the truth (68 % intervals that cover a few per cent of it); in a 250 kpc
    field the same halos are flagged inside, and their intervals cover as the card's do (400 maps each,
    3 binomial standard errors)."""
    n, slack = 400, 3 * np.sqrt(0.68 * 0.32 / 400)
    wide = run_set(predictor, n, 31, EVALUATION_SETS["galaxy_halos"], 50, False)
    narrow = run_set(predictor, n, 32, EVALUATION_SETS["galaxy_halos_250_kpc_field"], 50, False)
    assert wide["inside"].mean() < 0.2 and narrow["inside"].mean() > 0.9
    for arrays, chosen, lowest, highest in ((wide, ~wide["inside"], 0.0, 0.2),
                                            (narrow, narrow["inside"], 0.68 - slack, 0.68 + slack)):
        error = np.abs(arrays["centre"] - arrays["truth"])[chosen]
        mass_coverage = np.mean(error[:, 0] <= arrays["half68"][chosen, 0])
        assert lowest <= mass_coverage <= highest, mass_coverage
