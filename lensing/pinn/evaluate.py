"""`lensing evaluate`: accuracy, coverage and classification of the PINN on fresh held-out maps.

Held-out sets (from a seed the user gives, never one used in training or calibration), `EVALUATION_SETS`:
smooth centred maps at the default geometry (the headline), another geometry, noisy maps at three noise
levels, off-centre halos, maps with scenarios (classification; its own, larger size) and everything at
once; then two sets outside the training domain (`lensing.pinn.domain`), to measure what its results
warn about: realistic galaxy halos (Duffy et al. 2008 concentrations, r_s below the box) in the default
field, where they span a few pixels, and in a 250 kpc field, where they are resolved. Every map goes
through the public Predictor as the service runs it: the noise level is estimated from the map. Each
set drawn like the training maps is measured in the network mode and the symmetrized mode (the network
averaged over the map's eight turned and mirrored views), two of them also refined. Writes
DIR/metrics.json and, per set and mode, a coverage plot and a predicted-against-true plot.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from ..arguments import SEED, at_least, invoked_command
from ..halo import duffy_concentration, r200_from_mass
from ..limits import ELLIPTICITY
from ..scenarios import CLASS_NAMES, NO_SUBSTRUCTURE, NONE_CLASS, SCENARIOS
from ..synthetic import NO_SCENARIO, HostBatch
from .calibration import LEVELS
from .checkpoint import CARD_NAME, PACKAGE_WEIGHTS_DIR, WEIGHTS_NAME, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, reported_array
from .interval_groups import MASS_BIN_EDGES, mass_bin
from .predictor import CALIBRATED_MODES, MapGeometry, Predictor

OTHER_GEOMETRY = MapGeometry(fov_kpc=750.0, z_lens=0.35, z_source=1.2)
CHUNK = 250
NOMINAL = LEVELS  # the nominal coverage of the 68 % and 95 % intervals


@dataclass(frozen=True)
class EvaluationSet:
    """What the maps of one held-out set look like."""

    geometry: MapGeometry = MapGeometry()
    noise_sigma: float = 0.0
    scenario_fraction: float = 0.0
    max_offset: float = 0.0  # per axis, fraction of the field of view
    refine: bool = False  # also measure the refined mode (costly)
    classification: bool = False  # the scenario set: its size is n_scenarios
    duffy_masses: tuple[float, float] | None = None  # hosts of this M_vir range with Duffy c, not box draws

    @property
    def goals_apply(self) -> bool:
        """Hosts drawn like the training maps' (the coverage goals apply); the galaxy sets' are not."""
        return self.duffy_masses is None

    @property
    def modes(self) -> list[str]:
        """The calibrated modes measured on this set: the network, refined where asked (costly), and
        symmetrized (8x the network's cost) where the goals apply."""
        return ["network"] + ["refined"] * self.refine + ["symmetrized"] * self.goals_apply


GALAXY_MASSES = (1e11, 3e12)  # Msun: Duffy r_s ~ 11 to 49 kpc at z 0.5, all below the box's 50 kpc


EVALUATION_SETS = {
    "smooth": EvaluationSet(refine=True),
    "other_geometry": EvaluationSet(geometry=OTHER_GEOMETRY),
    "noisy_sigma_0.005": EvaluationSet(noise_sigma=0.005),
    "noisy_sigma_0.01": EvaluationSet(noise_sigma=0.01, refine=True),
    "noisy_sigma_0.02": EvaluationSet(noise_sigma=0.02),
    "off_centre": EvaluationSet(max_offset=0.1),
    "scenarios": EvaluationSet(scenario_fraction=1.0, classification=True),
    "all_at_once": EvaluationSet(geometry=OTHER_GEOMETRY, noise_sigma=0.01, scenario_fraction=0.75, max_offset=0.1),
    "galaxy_halos": EvaluationSet(duffy_masses=GALAXY_MASSES),
    "galaxy_halos_250_kpc_field": EvaluationSet(geometry=MapGeometry(fov_kpc=250.0), duffy_masses=GALAXY_MASSES),
}


def duffy_hosts(size: int, rng: np.random.Generator, masses: tuple[float, float], geometry: MapGeometry) -> HostBatch:
    """Smooth hosts with M_vir log-uniform in `masses`, r_s from the Duffy et al. (2008) concentration at the
    geometry's z_lens, e uniform over the box, position angle uniform."""
    lens = geometry.lens
    mass = 10 ** rng.uniform(np.log10(masses[0]), np.log10(masses[1]), size)
    r_s = r200_from_mass(mass, lens.rho_crit) / duffy_concentration(mass, lens.z_lens, lens.H0 / 100.0)
    ellipticity = rng.uniform(*ELLIPTICITY.endpoints, size)
    angle = rng.uniform(0.0, 180.0, size)
    return HostBatch(mass, r_s, ellipticity, angle, np.full(size, NO_SCENARIO), rng.integers(0, 2**62, size))


def run_set(predictor: Predictor, n: int, seed: int, spec: EvaluationSet, mc_samples: int, refine: bool,
            symmetrize: bool = False) -> dict:
    """Predict a held-out set; returns arrays of truths, predictions and interval widths."""
    rng = np.random.default_rng(seed)
    recipe = DataRecipe()
    geometry = spec.geometry
    parts: dict[str, list] = {k: [] for k in ("truth", "centre", "half68", "half95", "probs", "scenario", "drawn",
                                              "noise", "inside")}
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        hosts = None if spec.duffy_masses is None else duffy_hosts(size, rng, spec.duffy_masses, geometry)
        batch = make_batch(size, rng, recipe, geometry=geometry.lens, fov_kpc=geometry.fov_kpc,
                           noise_sigma=spec.noise_sigma, scenario_fraction=spec.scenario_fraction,
                           max_offset=spec.max_offset, hosts=hosts)
        result = predictor.predict_batch(batch.maps.numpy().astype(np.float64), geometry, mc_samples, refine,
                                         seed=list(range(seed * 1_000_003 + start, seed * 1_000_003 + start + size)),
                                         symmetrize=symmetrize)
        parts["truth"].append(reported_array(batch.theta.double().numpy(), geometry.lens, geometry.fov_kpc))
        parts["centre"].append(result.centre)
        parts["half68"].append(result.half68)
        parts["half95"].append(result.half95)
        parts["probs"].append(result.class_probs)
        parts["scenario"].append(batch.scenario.numpy())
        parts["drawn"].append(batch.drawn_scenario)
        parts["noise"].append(result.noise_sigma)
        parts["inside"].append(np.array([not outside for outside in result.outside_training]))
    return {k: np.concatenate(v) for k, v in parts.items()}


def median_errors(err: np.ndarray) -> dict[str, float]:
    """Medians of |error| (B, 5 REPORTED): M in dex, r_s relative, e, the centre per axis in kpc."""
    return {
        "median_abs_dlog10_M": float(np.median(np.abs(err[:, 0]))),
        "median_rel_err_rs": float(np.median(np.abs(10.0 ** err[:, 1] - 1.0))),
        "median_abs_de": float(np.median(np.abs(err[:, 2]))),
        "median_abs_dcenter_kpc": float(np.median(np.abs(err[:, 3:5]))),
    }


def coverage_by_mass(err: np.ndarray, half68: np.ndarray, true_log10_mass: np.ndarray) -> dict:
    """{quantity: [68 % coverage among the maps of each true-mass bin (MASS_BIN_EDGES), None where empty]}: a set's
    coverage can hold on average while faint halos under-cover and massive ones over-cover."""
    bins = mass_bin(true_log10_mass)
    inside = np.abs(err) <= half68
    return {name: [float(np.mean(inside[bins == b, i])) if np.any(bins == b) else None
                   for b in range(len(MASS_BIN_EDGES) + 1)]
            for i, name in enumerate(REPORTED)}


def coverage_by_scenario(err: np.ndarray, half68: np.ndarray, scenario: np.ndarray) -> dict:
    """{scenario: {quantity: 68 % coverage among its maps}} for each scenario the set holds: a cored (SIDM)
    host's errors are about twice a CDM or WDM host's, which one k for all of them averaged away."""
    inside = np.abs(err) <= half68
    return {name: {quantity: float(np.mean(inside[scenario == index, i])) for i, quantity in enumerate(REPORTED)}
            for index, name in enumerate(SCENARIOS) if np.any(scenario == index)}


def summarise_set(arrays: dict) -> dict:
    """The metrics of one set: median errors, coverage per quantity (overall, by true mass and, where the set
    has substructure, by true scenario), classification where labelled.

    `scenario_accuracy` is over maps whose scenario shows in the field (four classes: "none" is wrong
    there); `scenario_accuracy_all_draws_3_classes` is over every drawn scenario, empty draws included,
    with the argmax over CDM, WDM and SIDM only: the figure the scenario oracle's ceiling refers to.
    `none_rate_on_smooth` is over maps with nothing to see (smooth hosts and empty draws)."""
    err = arrays["centre"] - arrays["truth"]
    metrics: dict = {
        "n_maps": int(len(err)),
        **median_errors(err),
        "median_noise_sigma_estimate": float(np.median(arrays["noise"])),
        "inside_training_domain": float(np.mean(arrays["inside"])),  # share of maps whose result says inside
        "coverage_68": {name: float(np.mean(np.abs(err[:, i]) <= arrays["half68"][:, i]))
                        for i, name in enumerate(REPORTED)},
        "coverage_95": {name: float(np.mean(np.abs(err[:, i]) <= arrays["half95"][:, i]))
                        for i, name in enumerate(REPORTED)},
        "coverage_68_by_true_mass": coverage_by_mass(err, arrays["half68"], arrays["truth"][:, 0]),
    }
    if by_scenario := coverage_by_scenario(err, arrays["half68"], arrays["scenario"]):
        metrics["coverage_68_by_true_scenario"] = by_scenario
    predicted = arrays["probs"].argmax(1)
    smooth = arrays["scenario"] == NONE_CLASS
    if smooth.any():
        metrics["none_rate_on_smooth"] = float(np.mean(predicted[smooth] == NONE_CLASS))
    labelled = ~smooth
    if labelled.any():
        truth, pred = arrays["scenario"][labelled], predicted[labelled]
        confusion = np.zeros((len(SCENARIOS), len(CLASS_NAMES)), dtype=int)
        np.add.at(confusion, (truth, pred), 1)
        accuracy = float(np.mean(truth == pred))
        metrics["scenario_accuracy"] = accuracy
        metrics["scenario_accuracy_stderr"] = float(np.sqrt(accuracy * (1.0 - accuracy) / truth.size))
        metrics["confusion_matrix"] = confusion.tolist()
    drawn = arrays["drawn"] >= 0
    if drawn.any():
        three = arrays["probs"][drawn, : len(SCENARIOS)].argmax(1)
        metrics["scenario_accuracy_all_draws_3_classes"] = float(np.mean(three == arrays["drawn"][drawn]))
        metrics["share_of_draws_without_substructure_in_field"] = float(np.mean(smooth[drawn]))
    return metrics


AXIS_LABELS = ("log10 M_vir [Msun]", "log10 r_s [kpc]", "ellipticity", "centre x [kpc]", "centre y [kpc]")


def _plot_scatter(arrays: dict, title: str, path: Path) -> None:
    fig = Figure(figsize=(17, 3.8))
    for i, label in enumerate(AXIS_LABELS):
        ax = fig.add_subplot(1, len(AXIS_LABELS), i + 1)
        ax.scatter(arrays["truth"][:, i], arrays["centre"][:, i], s=2, alpha=0.4)
        lo, hi = arrays["truth"][:, i].min(), arrays["truth"][:, i].max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel(f"predicted {label}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_coverage(arrays: dict, title: str, path: Path) -> None:
    """Empirical against nominal coverage of Gaussian intervals with the calibrated 68 % width as sigma."""
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
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=100)


def _plot_confusion(matrix: list[list[int]], path: Path) -> None:
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    m = np.asarray(matrix)
    ax.imshow(m, cmap="Blues")
    for (i, j), value in np.ndenumerate(m):
        ax.text(j, i, str(value), ha="center", va="center")
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_yticks(range(len(SCENARIOS)), SCENARIOS)
    ax.set_xlabel(f"predicted ({NO_SUBSTRUCTURE}: no detectable substructure)")
    ax.set_ylabel("true scenario")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def coverage_goals_met(block: dict, tolerance_68: float = 0.05, tolerance_95: float = 0.03) -> dict[str, bool]:
    """Per quantity: is the coverage within the tolerance of nominal at 68 % and at 95 %?"""
    return {name: abs(block["coverage_68"][name] - NOMINAL["68"]) <= tolerance_68
            and abs(block["coverage_95"][name] - NOMINAL["95"]) <= tolerance_95 for name in REPORTED}


def evaluate(
    predictor: Predictor, n: int, seed: int, output: Path, mc_samples: int = 50, n_scenarios: int | None = None
) -> dict:
    """Run every held-out set, write metrics.json and plots into `output`, return the metrics.

    The scenario set has `n_scenarios` maps (default n): an accuracy near 92 % needs ~10,000 maps for a
    binomial standard error of 0.3 points, where 2,000 maps give 0.6 (recorded as scenario_accuracy_stderr).
    """
    output.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    started = time.time()
    for offset, (name, spec) in enumerate(EVALUATION_SETS.items()):
        size = (n_scenarios or n) if spec.classification else n
        for mode in spec.modes:
            arrays = run_set(predictor, size, seed + offset, spec, mc_samples, **CALIBRATED_MODES[mode])
            block = summarise_set(arrays)
            block["coverage_within_goal"] = coverage_goals_met(block)
            block["goals_apply"] = spec.goals_apply
            results.setdefault(name, {})[mode] = block
            title = f"{name}, {mode} (z_l {spec.geometry.z_lens:g}, z_s {spec.geometry.z_source:g})"
            _plot_scatter(arrays, title, output / f"pred_vs_true_{name}_{mode}.png")
            _plot_coverage(arrays, title, output / f"coverage_{name}_{mode}.png")
            if spec.classification and mode == "network":
                _plot_confusion(block["confusion_matrix"], output / "confusion_matrix.png")
    scenarios = results["scenarios"]["network"]
    headline = results["smooth"]["network"] | {
        key: scenarios[key] for key in ("scenario_accuracy", "scenario_accuracy_stderr", "confusion_matrix",
                                        "scenario_accuracy_all_draws_3_classes")
    }
    metrics = headline | {
        "refined": results["smooth"]["refined"],
        "sets": results,
        "class_names": list(CLASS_NAMES),
        "geometry": {"default": MapGeometry().__dict__, "other": OTHER_GEOMETRY.__dict__},
        "mc_samples": mc_samples,
        "seed": seed,
        "seconds": round(time.time() - started, 1),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="measure accuracy and coverage on fresh held-out maps")
    parser.add_argument("--n", type=at_least(1, "maps per set"), default=2000, help="maps per held-out set")
    parser.add_argument("--n-scenarios", type=at_least(1, "maps in the set"), default=10_000,
                        help="maps in the scenario (classification) set")
    parser.add_argument("--seed", type=SEED, default=777,
                        help="held-out seed (training streams use [seed, step]; calibration seed + 10000)")
    parser.add_argument("--output", default="runs/evaluation", help="directory for metrics.json and plots")
    parser.add_argument("--mc-samples", type=at_least(2, "coverage needs intervals, which need two samples"),
                        default=50, help="MC Dropout samples per map (at least 2)")
    parser.add_argument("--weights", help="directory with pinn.safetensors + pinn_card.json (default: shipped)")
    parser.add_argument("--update-card", action="store_true", help="record the metrics in that directory's card")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights) if args.weights else PACKAGE_WEIGHTS_DIR
    predictor = Predictor.from_files(directory / WEIGHTS_NAME, directory / CARD_NAME)
    metrics = evaluate(predictor, args.n, args.seed, Path(args.output), args.mc_samples, args.n_scenarios)
    if args.update_card:
        card = dict(predictor.card, metrics=metrics, evaluation_command=invoked_command())
        write_card(card, directory)
    print(json.dumps({k: metrics[k] for k in ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de",
                                               "median_abs_dcenter_kpc", "scenario_accuracy", "coverage_68",
                                               "coverage_95")}))
    return 0
