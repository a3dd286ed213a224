"""The per-pixel noise estimate (lensing.noise): what the service reports when a request gives no noise_sigma."""

from __future__ import annotations

import numpy as np
import pytest

from lensing import MapRequest, generate_map
from lensing.noise import estimate_noise_sigma


@pytest.mark.parametrize("scenario", [None, "CDM", "SIDM"])
@pytest.mark.parametrize("sigma", [0.002, 0.01, 0.03])
def test_estimate_recovers_the_added_noise(scenario, sigma):
    """Within 5 % on 64-pixel maps with a cusp and subhalos (outliers the robust scale ignores)."""
    kappa = generate_map(MapRequest(M_vir=5e12, concentration=8.0, scenario=scenario, noise_sigma=sigma,
                                    seed=3)).convergence
    assert estimate_noise_sigma(kappa)[0] == pytest.approx(sigma, rel=0.05)


def test_noiseless_maps_give_a_floor_far_below_any_noise():
    kappa = np.stack([generate_map(MapRequest(M_vir=m, concentration=6.0, grid_size=128)).convergence
                      for m in (1e11, 1e12, 1e14)])
    estimates = estimate_noise_sigma(kappa)
    assert estimates.shape == (3,) and np.all(estimates < 1e-4)


def test_a_batch_is_estimated_map_by_map():
    rng = np.random.default_rng(0)
    maps = rng.normal(0.0, 1.0, (3, 48, 48)) * np.array([0.001, 0.01, 0.1])[:, None, None]
    np.testing.assert_allclose(estimate_noise_sigma(maps), [0.001, 0.01, 0.1], rtol=0.06)
