"""Why the network's point estimate is its deterministic pass, not the mean of its MC samples
(docs/design.md section 5, "Point estimate").

The mean of T MC Dropout samples carries the dropout's own scatter, which shrinks only as 1/sqrt(T). This
script draws two of `lensing evaluate`'s held-out sets (smooth, and noisy at sigma 0.01; same recipe, a
seed of your choice) once and, for each mc_samples, prints the median absolute errors of the samples' mean
beside those of the deterministic network (dropout off), which the Predictor reports. Each map keeps its
seed across the rows, so the rows differ only in the number of samples.

    python docs/model/mc_samples_accuracy.py [--n 2000] [--seed 4242]

2 x 2,000 maps take about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lensing.noise import estimate_noise_sigma
from lensing.pinn.data import DataRecipe, make_batch
from lensing.pinn.encoding import reported_array
from lensing.pinn.evaluate import CHUNK, EVALUATION_SETS, median_errors
from lensing.pinn.predictor import Predictor
from lensing.pinn.sampling import sample_theta, summarise

SETS = ("smooth", "noisy_sigma_0.01")
MC_SAMPLES = (5, 10, 20, 50, 100, 200)


def measure(predictor: Predictor, name: str, n: int, seed: int) -> dict[str, dict[str, float]]:
    """{"deterministic": median errors, "mean of T": median errors for each T} on one set (the card's names)."""
    spec = EVALUATION_SETS[name]
    geometry, rng = spec.geometry, np.random.default_rng(seed)
    errors: dict[str, list[np.ndarray]] = {"deterministic": []} | {f"mean of {mc}": [] for mc in MC_SAMPLES}
    for start in range(0, n, CHUNK):
        batch = make_batch(min(CHUNK, n - start), rng, DataRecipe(), geometry=geometry.lens,
                           fov_kpc=geometry.fov_kpc, noise_sigma=spec.noise_sigma,
                           scenario_fraction=spec.scenario_fraction, max_offset=spec.max_offset)
        maps = batch.maps.numpy().astype(np.float64)
        truth = reported_array(batch.theta.double().numpy(), geometry.lens, geometry.fov_kpc)
        seeds = list(range(start, start + len(maps)))
        x, noise = predictor.network_input(maps, estimate_noise_sigma(maps))
        for mc in MC_SAMPLES:
            theta, log_spread, logits, _ = sample_theta(predictor.model, x, noise, mc, seeds, predictor.scaler)
            mean = summarise(theta, log_spread, logits, geometry.lens, geometry.fov_kpc).reported_centre
            errors[f"mean of {mc}"].append(mean - truth)
        errors["deterministic"].append(predictor.predict_batch(maps, geometry, 2, seed=seeds).centre - truth)
    return {estimate: median_errors(np.concatenate(parts)) for estimate, parts in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="maps per set")
    parser.add_argument("--seed", type=int, default=4242, help="held-out seed (not the card's 777)")
    args = parser.parse_args()
    predictor = Predictor.from_package(device="cpu")
    results = {name: measure(predictor, name, args.n, args.seed) for name in SETS}
    print(f"{'set':18s} {'estimate':>14s} {'M [dex]':>8s} {'r_s':>7s} {'e':>7s}")
    for name, by_estimate in results.items():
        for estimate, figures in by_estimate.items():
            print(f"{name:18s} {estimate:>14s} {figures['median_abs_dlog10_M']:8.4f} "
                  f"{100 * figures['median_rel_err_rs']:6.2f}% {figures['median_abs_de']:7.4f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
