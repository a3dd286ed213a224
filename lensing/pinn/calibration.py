"""Uncertainty calibration: per-parameter scales that make nominal 68 % / 95 % intervals honest.

For each reported quantity (log10 M, log10 r_s, e) the interval is centre +/- k * raw spread: the MC
Dropout standard deviation for the network alone, the fit's Laplace standard deviation with refinement.
On a validation set of smooth maps (a seed never used in training) k68 and k95 are the 68th and 95th
percentiles of |error| / raw spread, fitted separately for the two modes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..cosmology import lens_geometry
from ..grid import DEFAULT_FOV_KPC
from .checkpoint import CARD_NAME, WEIGHTS_NAME, load_weights, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, ThetaScaler, reported_array, reported_std_from_covariance
from .model import PINN
from .preprocess import prepare_input
from .refine import refine_theta
from .sampling import sample_theta, summarise

CALIBRATION_SAMPLES = 50
LEVELS = {"68": 0.6827, "95": 0.9545}


def interval_scales(errors: np.ndarray, raw_std: np.ndarray) -> dict:
    """{level: {parameter: k}} with k the level-quantile of |error| / raw_std."""
    ratio = np.abs(errors) / np.clip(raw_std, 1e-12, None)
    return {
        level: {name: float(np.quantile(ratio[:, i], q)) for i, name in enumerate(REPORTED)}
        for level, q in LEVELS.items()
    }


def reported_truth(theta: torch.Tensor, fov_kpc: float) -> np.ndarray:
    """Truths (B, 3) in the reported space for default geometry maps."""
    return reported_array(theta.double().numpy(), lens_geometry(), fov_kpc)


def fit_calibration(
    model: PINN, scaler: ThetaScaler, recipe: DataRecipe, n_maps: int, seed: int, chunk: int = 250
) -> dict:
    """Fit interval scales for 'network' and 'refined' modes on smooth validation maps."""
    rng = np.random.default_rng(seed)
    errors, refined_errors, stds, refined_stds = [], [], [], []
    geometry = lens_geometry()
    for start in range(0, n_maps, chunk):
        size = min(chunk, n_maps - start)
        batch = make_batch(size, rng, recipe, geometry=geometry, fov_kpc=DEFAULT_FOV_KPC, noise_sigma=0.0,
                           scenario_fraction=0.0)
        x = prepare_input(batch.maps, model.config.input_size)
        theta, logits = sample_theta(model, x, CALIBRATION_SAMPLES, list(range(start, start + size)), scaler)
        summary = summarise(theta, logits, geometry, DEFAULT_FOV_KPC)
        truth = reported_truth(batch.theta, DEFAULT_FOV_KPC)
        refined, covariance = refine_theta(torch.as_tensor(summary.theta_mean), batch.maps)
        refined = refined.numpy()
        errors.append(summary.reported_mean - truth)
        refined_errors.append(reported_array(refined, geometry, DEFAULT_FOV_KPC) - truth)
        stds.append(summary.reported_std)
        refined_stds.append(reported_std_from_covariance(refined, covariance.numpy(), geometry, DEFAULT_FOV_KPC))
    errors, refined_errors, stds, refined_stds = map(np.concatenate, (errors, refined_errors, stds, refined_stds))
    return {
        "method": "interval = centre +/- k * spread in (log10 M, log10 r_s, e); spread = MC Dropout std "
                  "(network) or Laplace std of the fit (refined); k = quantile of |err| / spread",
        "mc_samples": CALIBRATION_SAMPLES,
        "validation_maps": int(n_maps),
        "validation_seed": int(seed),
        "network": interval_scales(errors, stds),
        "refined": interval_scales(refined_errors, refined_stds),
    }


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="refit the uncertainty calibration of trained weights")
    parser.add_argument("--weights", required=True, help="directory with pinn.safetensors + pinn_card.json")
    parser.add_argument("--n", type=int, default=2000, help="validation maps")
    parser.add_argument("--seed", type=int, default=10_001, help="validation seed (not used in training)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights)
    model, card = load_weights(directory / WEIGHTS_NAME, directory / CARD_NAME)
    scaler = ThetaScaler(**{k: tuple(v) for k, v in card["theta_scaler"].items()})
    recipe = DataRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in card["data_recipe"].items()})
    card["calibration"] = fit_calibration(model, scaler, recipe, args.n, args.seed)
    write_card(card, directory)
    print(json.dumps(card["calibration"]))
    return 0
