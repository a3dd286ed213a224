"""`lensing evaluate`: accuracy, coverage and confusion of the PINN on fresh held-out maps.

Held-out sets (all from a seed the user gives, never one used in training or calibration):
smooth maps at the default geometry (the headline numbers, network alone and refined), maps with
scenarios (classification), noisy maps (sigma_kappa = 0.01) and maps at another geometry.
Writes DIR/metrics.json and plots; everything goes through the public Predictor.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from ..scenarios import SCENARIOS
from .checkpoint import CARD_NAME, PACKAGE_WEIGHTS_DIR, WEIGHTS_NAME, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, reported_array
from .predictor import MapGeometry, Predictor

OTHER_GEOMETRY = MapGeometry(fov_kpc=750.0, z_lens=0.35, z_source=1.2)
NOISE_SIGMA = 0.01
CHUNK = 250


def run_set(predictor: Predictor, n: int, seed: int, geometry: MapGeometry, noise: float, scenario_fraction: float,
            mc_samples: int, refine: bool) -> dict:
    """Predict a held-out set; returns arrays of truths, predictions and interval widths."""
    rng = np.random.default_rng(seed)
    recipe = DataRecipe()
    parts: dict[str, list] = {k: [] for k in ("truth", "centre", "half68", "half95", "probs", "scenario")}
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        batch = make_batch(size, rng, recipe, geometry=geometry.lens, fov_kpc=geometry.fov_kpc,
                           noise_sigma=noise, scenario_fraction=scenario_fraction)
        result = predictor.predict_batch(batch.maps.numpy().astype(np.float64), geometry, mc_samples, refine,
                                         seed=list(range(seed * 1_000_003 + start, seed * 1_000_003 + start + size)))
        parts["truth"].append(reported_array(batch.theta.double().numpy(), geometry.lens, geometry.fov_kpc))
        parts["centre"].append(result.centre)
        parts["half68"].append(result.half68)
        parts["half95"].append(result.half95)
        parts["probs"].append(result.class_probs)
        parts["scenario"].append(batch.scenario.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def summarise_set(arrays: dict) -> dict:
    """The metrics of one set (the keys the issue names), plus the confusion matrix when labelled."""
    err = arrays["centre"] - arrays["truth"]
    metrics = {
        "n_maps": int(len(err)),
        "median_abs_dlog10_M": float(np.median(np.abs(err[:, 0]))),
        "median_rel_err_rs": float(np.median(np.abs(10.0 ** err[:, 1] - 1.0))),
        "median_abs_de": float(np.median(np.abs(err[:, 2]))),
        "coverage_68": {name: float(np.mean(np.abs(err[:, i]) <= arrays["half68"][:, i]))
                        for i, name in enumerate(REPORTED)},
        "coverage_95": {name: float(np.mean(np.abs(err[:, i]) <= arrays["half95"][:, i]))
                        for i, name in enumerate(REPORTED)},
    }
    labelled = arrays["scenario"] >= 0
    if labelled.any():
        truth, pred = arrays["scenario"][labelled], arrays["probs"][labelled].argmax(1)
        confusion = np.zeros((len(SCENARIOS), len(SCENARIOS)), dtype=int)
        np.add.at(confusion, (truth, pred), 1)
        accuracy = float(np.mean(truth == pred))
        metrics["scenario_accuracy"] = accuracy
        metrics["scenario_accuracy_stderr"] = float(np.sqrt(accuracy * (1.0 - accuracy) / truth.size))
        metrics["confusion_matrix"] = confusion.tolist()
    return metrics


def _plot_scatter(arrays: dict, path: Path) -> None:
    fig = Figure(figsize=(12, 4))
    labels = ("log10 M_vir [Msun]", "log10 r_s [kpc]", "ellipticity")
    for i, label in enumerate(labels):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.scatter(arrays["truth"][:, i], arrays["centre"][:, i], s=2, alpha=0.4)
        lo, hi = arrays["truth"][:, i].min(), arrays["truth"][:, i].max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"predicted {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_coverage(arrays: dict, path: Path) -> None:
    """Empirical vs nominal coverage of Gaussian intervals with the calibrated 68 % width as sigma."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1)
    nominal = np.linspace(0.05, 0.99, 40)
    err = np.abs(arrays["centre"] - arrays["truth"])
    for i, name in enumerate(REPORTED):
        sigma = np.clip(arrays["half68"][:, i], 1e-15, None)
        ax.plot(nominal, [np.mean(err[:, i] <= norm.ppf(0.5 + q / 2) * sigma) for q in nominal], label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage")
    ax.legend()
    fig.savefig(path, dpi=110)


def _plot_confusion(matrix: list[list[int]], path: Path) -> None:
    fig = Figure(figsize=(4.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    m = np.asarray(matrix)
    ax.imshow(m, cmap="Blues")
    for (i, j), value in np.ndenumerate(m):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(SCENARIOS)), SCENARIOS)
    ax.set_yticks(range(len(SCENARIOS)), SCENARIOS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def evaluate(
    predictor: Predictor, n: int, seed: int, output: Path, mc_samples: int = 50, n_scenarios: int | None = None
) -> dict:
    """Run every held-out set, write metrics.json and plots into `output`, return the metrics.

    The scenario set has `n_scenarios` maps (default n): an accuracy near 90 % needs ~10,000 maps for a
    binomial standard error of 0.3 points, where 2,000 maps give 0.7 (recorded as scenario_accuracy_stderr).
    """
    output.mkdir(parents=True, exist_ok=True)
    default = MapGeometry()
    sets = {
        "smooth": (default, 0.0, 0.0),
        "scenarios": (default, 0.0, 1.0),
        f"noisy_sigma_{NOISE_SIGMA}": (default, NOISE_SIGMA, 0.0),
        "other_geometry": (OTHER_GEOMETRY, 0.0, 0.0),
    }
    results: dict = {}
    started = time.time()
    for offset, (name, (geometry, noise, fraction)) in enumerate(sets.items()):
        for refine in (False, True):
            if name == "scenarios" and refine:
                continue
            size = (n_scenarios or n) if name == "scenarios" else n
            arrays = run_set(predictor, size, seed + offset, geometry, noise, fraction, mc_samples, refine)
            mode = "refined" if refine else "network"
            results.setdefault(name, {})[mode] = summarise_set(arrays)
            if name == "smooth":
                _plot_scatter(arrays, output / f"pred_vs_true_{mode}.png")
                _plot_coverage(arrays, output / f"coverage_{mode}.png")
            if name == "scenarios":
                _plot_confusion(results[name][mode]["confusion_matrix"], output / "confusion_matrix.png")
    headline = results["smooth"]["network"] | {
        "scenario_accuracy": results["scenarios"]["network"]["scenario_accuracy"],
        "scenario_accuracy_stderr": results["scenarios"]["network"]["scenario_accuracy_stderr"],
        "confusion_matrix": results["scenarios"]["network"]["confusion_matrix"],
    }
    metrics = headline | {
        "refined": results["smooth"]["refined"],
        "sets": results,
        "geometry": {"default": default.__dict__, "other": OTHER_GEOMETRY.__dict__},
        "mc_samples": mc_samples,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="measure accuracy and coverage on fresh held-out maps")
    parser.add_argument("--n", type=int, default=2000, help="maps per held-out set")
    parser.add_argument("--n-scenarios", type=int, default=10_000, help="maps in the scenario (classification) set")
    parser.add_argument("--seed", type=int, default=777,
                        help="held-out seed (training streams use [seed, step]; calibration seed + 10000)")
    parser.add_argument("--output", default="runs/evaluation", help="directory for metrics.json and plots")
    parser.add_argument("--mc-samples", type=int, default=50, help="MC Dropout samples per map")
    parser.add_argument("--weights", help="directory with pinn.safetensors + pinn_card.json (default: shipped)")
    parser.add_argument("--update-card", action="store_true", help="record the metrics in that directory's card")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights) if args.weights else PACKAGE_WEIGHTS_DIR
    predictor = Predictor.from_files(directory / WEIGHTS_NAME, directory / CARD_NAME)
    metrics = evaluate(predictor, args.n, args.seed, Path(args.output), args.mc_samples, args.n_scenarios)
    if args.update_card:
        card = dict(predictor.card, metrics=metrics, evaluation_command="lensing " + shlex.join(sys.argv[1:]))
        write_card(card, directory)
    print(json.dumps({k: metrics[k] for k in ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de",
                                               "scenario_accuracy", "coverage_68", "coverage_95")}))
    return 0
