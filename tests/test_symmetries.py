"""The eight views of a map: each view is the map of the turned or mirrored halo, and its theta maps back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensing.pinn.physics import render_theta
from lensing.pinn.predictor import MapGeometry, Predictor
from lensing.pinn.symmetries import SYMMETRIES, Symmetry, to_original_frame

# an elliptical halo off the centre along both axes, its major axis at neither 0 nor 45 degrees
THETA = torch.tensor([[-1.2, -0.9, 0.25 * np.cos(0.7), 0.25 * np.sin(0.7), 0.06, -0.03]], dtype=torch.float64)


def view_theta(theta: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """The halo of the view, by hand: centre A c, traceless shape tensor A S A^T."""
    a = torch.as_tensor(symmetry.matrix(), dtype=theta.dtype)
    e1, e2 = theta[0, 2], theta[0, 3]
    shape = a @ torch.tensor([[e1, e2], [e2, -e1]], dtype=theta.dtype) @ a.T
    centre = a @ theta[0, 4:6]
    return torch.cat([theta[0, :2], shape[0, :2], centre])[None]


def test_there_are_eight_distinct_signed_permutations() -> None:
    matrices = {tuple(s.matrix().ravel()) for s in SYMMETRIES}
    assert len(matrices) == 8
    for s in SYMMETRIES:
        a = s.matrix()
        assert np.allclose(a @ a.T, np.eye(2)) and set(np.abs(a).ravel()) == {0.0, 1.0}


@pytest.mark.parametrize("symmetry", SYMMETRIES, ids=str)
def test_a_view_is_the_map_of_the_turned_halo_and_its_theta_maps_back(symmetry: Symmetry) -> None:
    kappa = render_theta(THETA, 64)
    turned = view_theta(THETA, symmetry)
    assert torch.allclose(symmetry.apply(kappa), render_theta(turned, 64), rtol=1e-9, atol=1e-12)
    spread = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=torch.float64))
    back, back_spread = to_original_frame(turned, spread, symmetry)
    assert torch.allclose(back, THETA, atol=1e-12)
    swapped = symmetry.matrix()[0, 0] == 0  # a view whose x is the map's y: the centre spreads swap
    expected = [0.1, 0.2, 0.3, 0.5, 0.4] if swapped else [0.1, 0.2, 0.3, 0.4, 0.5]
    assert torch.allclose(back_spread.exp(), torch.tensor([expected], dtype=torch.float64))


def test_symmetrized_estimates_agree_with_the_network_and_are_reproducible() -> None:
    """On noisy off-centre elliptical maps the eight pooled views land on the same halo as the plain network
    (a wrong back-transform would scatter the centre and ellipticity), and a seed fixes the result."""
    predictor = Predictor.from_package(device="cpu")
    rng = np.random.default_rng(5)
    thetas = torch.tensor([[-1.0 - 0.3 * k, -1.0 + 0.1 * k, 0.3 * np.cos(k), 0.3 * np.sin(k), 0.05, -0.04]
                           for k in range(4)], dtype=torch.float64)
    maps = render_theta(thetas, 64).numpy() + rng.normal(0.0, 0.005, (4, 64, 64))
    plain = predictor.predict_batch(maps, MapGeometry(), 20, seed=[1, 2, 3, 4], noise_sigma=0.005)
    views = predictor.predict_batch(maps, MapGeometry(), 20, seed=[1, 2, 3, 4], noise_sigma=0.005, symmetrize=True)
    again = predictor.predict_batch(maps, MapGeometry(), 20, seed=[1, 2, 3, 4], noise_sigma=0.005, symmetrize=True)
    assert np.array_equal(views.centre, again.centre)
    difference = np.abs(views.centre - plain.centre)
    assert (difference <= 2.0 * plain.half68).all(), difference / plain.half68
