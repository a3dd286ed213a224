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

from ..cosmology import MapGeometry
from .checkpoint import CARD_NAME, WEIGHTS_NAME, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, reported_array
from .predictor import Predictor

CALIBRATION_SAMPLES = 50
LEVELS = {"68": 0.6827, "95": 0.9545}


def interval_scales(errors: np.ndarray, raw_std: np.ndarray) -> dict:
    """{level: {parameter: k}} with k the level-quantile of |error| / raw_std."""
    ratio = np.abs(errors) / np.clip(raw_std, 1e-12, None)
    return {
        level: {name: float(np.quantile(ratio[:, i], q)) for i, name in enumerate(REPORTED)}
        for level, q in LEVELS.items()
    }


def fit_calibration(predictor: Predictor, recipe: DataRecipe, n_maps: int, seed: int, chunk: int = 250) -> dict:
    """Fit interval scales for 'network' and 'refined' modes on smooth validation maps.

    The maps go through the Predictor without calibration, whose half-widths are then the raw spreads.
    """
    raw = predictor.uncalibrated()
    rng = np.random.default_rng(seed)
    geometry = MapGeometry()
    errors: dict[bool, list] = {False: [], True: []}
    spreads: dict[bool, list] = {False: [], True: []}
    for start in range(0, n_maps, chunk):
        size = min(chunk, n_maps - start)
        batch = make_batch(size, rng, recipe, geometry=geometry.lens, fov_kpc=geometry.fov_kpc, noise_sigma=0.0,
                           scenario_fraction=0.0)
        truth = reported_array(batch.theta.double().numpy(), geometry.lens, geometry.fov_kpc)
        maps = batch.maps.numpy().astype(np.float64)
        for refine in (False, True):
            result = raw.predict_batch(maps, geometry, CALIBRATION_SAMPLES, refine, list(range(start, start + size)))
            errors[refine].append(result.centre - truth)
            spreads[refine].append(result.half68)
    fitted = {refine: interval_scales(np.concatenate(errors[refine]), np.concatenate(spreads[refine]))
              for refine in (False, True)}
    return {
        "method": "interval = centre +/- k * spread in (log10 M, log10 r_s, e); spread = MC Dropout std "
                  "(network) or Laplace std of the fit (refined); k = quantile of |err| / spread",
        "mc_samples": CALIBRATION_SAMPLES,
        "validation_maps": int(n_maps),
        "validation_seed": int(seed),
        "network": fitted[False],
        "refined": fitted[True],
    }


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="refit the uncertainty calibration of trained weights")
    parser.add_argument("--weights", required=True, help="directory with pinn.safetensors + pinn_card.json")
    parser.add_argument("--n", type=int, default=2000, help="validation maps")
    parser.add_argument("--seed", type=int, default=10_001, help="validation seed (not used in training)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights)
    predictor = Predictor.from_files(directory / WEIGHTS_NAME, directory / CARD_NAME)
    card = dict(predictor.card)
    recipe = DataRecipe.from_dict(card["data_recipe"])
    card["calibration"] = fit_calibration(predictor, recipe, args.n, args.seed)
    write_card(card, directory)
    print(json.dumps(card["calibration"]))
    return 0
