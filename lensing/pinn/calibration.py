"""Uncertainty calibration: per-parameter scales that make nominal 68 % / 95 % intervals honest.

For each reported quantity (log10 M, log10 r_s, e, centre x and y) the interval is centre +/- k * raw
spread: for the network alone the raw spread is sqrt(epistemic^2 + aleatoric^2) (MC Dropout standard
deviation and the head's learned per-map spread), with refinement the fit's Laplace standard deviation.
The validation set is drawn from the training mixture (noise, off-centre halos, scenarios, other
geometries; a seed never used in training), with the noise estimated from each map as the service does
by default; k68 and k95 are the 68th and 95th percentiles of |error| / raw spread, per mode and per
cell: the map's noise bin, crossed with the bin of the mode's estimate of log10 M_vir, crossed with the
group of its reported class: none, CDM or WDM, SIDM (`interval_groups`, which says why). A cell with too
few maps takes the k of its noise bin over all masses (then its group's over all bins). `lensing evaluate`
measures the coverage this gives on each kind of map separately.

Sixty cells need many maps: a quantile of a few hundred ratios moves by several per cent from one
validation seed to the next, and so did the coverage (2.2.0 weights, 3,000 maps: 73 of the 80 network
coverage figures within goal on the evaluation seed, 67 on another; 12,000 maps: 77 and 75). The
network's k come from `n_maps` maps (cheap: ~1.5 ms a map), and so do the symmetrized mode's (the network
on the map's eight turned and mirrored views, pooled: ~12 ms a map); the refined k from the first
`refined_maps` of them, because each refinement costs ~70 ms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..arguments import SEED, at_least, invoked_command
from ..cosmology import MapGeometry
from .checkpoint import CARD_NAME, WEIGHTS_NAME, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, reported_array
from .interval_groups import GROUPS, MASS_BIN_EDGES, NOISE_BIN_EDGES, group_members, mass_bin, noise_bin
from .predictor import CALIBRATED_MODES, Predictor
from .preprocess import noise_at_input

CALIBRATION_SAMPLES = 50
LEVELS = {"68": 0.6827, "95": 0.9545}
MIN_GROUP_MAPS = 30  # fewest maps whose quantile k is trusted for one cell (group, noise bin, mass bin)


def interval_scales(errors: np.ndarray, raw_std: np.ndarray, noise_bins: np.ndarray, mass_bins: np.ndarray,
                    members: dict[str, np.ndarray], rows: np.ndarray | None = None) -> dict:
    """{level: {group: {parameter: [[k per mass bin] per noise bin]}}}, k the level-quantile of |error| / raw_std
    among the maps of that cell (and, where `rows` (maps, parameters) is given, among the maps it marks for that
    parameter, unless it marks fewer than MIN_GROUP_MAPS). A cell with fewer than MIN_GROUP_MAPS maps takes the k
    of its group and noise bin over all masses, and failing that its group's over all bins (the card's
    `group_maps` shows which), so that no map is left without an interval."""
    ratio = np.abs(errors) / np.clip(raw_std, 1e-12, None)
    rows = np.ones(ratio.shape, dtype=bool) if rows is None else rows.copy()
    rows[:, rows.sum(axis=0) < MIN_GROUP_MAPS] = True  # too few marked maps: all of them

    def k(group: str, b: int, m: int, i: int, q: float) -> float:
        in_group = members[group] & rows[:, i]
        for chosen in (in_group & (noise_bins == b) & (mass_bins == m), in_group & (noise_bins == b), in_group):
            if chosen.sum() >= MIN_GROUP_MAPS:
                return float(np.quantile(ratio[chosen, i], q))
        return float(np.quantile(ratio[rows[:, i], i], q))

    return {
        level: {group: {name: [[k(group, b, m, i, q) for m in range(len(MASS_BIN_EDGES) + 1)]
                               for b in range(len(NOISE_BIN_EDGES) + 1)]
                        for i, name in enumerate(REPORTED)}
                for group in members}
        for level, q in LEVELS.items()
    }


def fit_calibration(predictor: Predictor, recipe: DataRecipe, n_maps: int, seed: int, refined_maps: int | None = None,
                    chunk: int = 125) -> dict:
    """Fit interval scales for 'network' and 'symmetrized' (on `n_maps` validation maps from the training
    mixture, its hosts within the API box: `DataRecipe.within_api_box`) and 'refined' mode (on the first
    `refined_maps` of them; default all).

    The maps go through the Predictor without calibration, whose half-widths are then the raw spreads.
    """
    raw = predictor.uncalibrated()
    refined_maps = n_maps if refined_maps is None else min(refined_maps, n_maps)
    counts = {"network": n_maps, "refined": refined_maps, "symmetrized": n_maps}
    rng = np.random.default_rng(seed)
    box = recipe.within_api_box()
    errors: dict[str, list] = {mode: [] for mode in CALIBRATED_MODES}
    spreads: dict[str, list] = {mode: [] for mode in CALIBRATED_MODES}
    noise: list[np.ndarray] = []
    off_centre: list[np.ndarray] = []
    probs: dict[str, list] = {mode: [] for mode in CALIBRATED_MODES}
    masses: dict[str, list] = {mode: [] for mode in CALIBRATED_MODES}  # each mode's estimate of log10 M_vir
    for start in range(0, n_maps, chunk):
        size = min(chunk, n_maps - start)
        batch = make_batch(size, rng, box)
        lens = batch.geometries[0]
        geometry = MapGeometry(float(batch.fov_kpc[0]), lens.z_lens, lens.z_source)
        truth = reported_array(batch.theta.double().numpy(), lens, geometry.fov_kpc)
        off_centre.append(np.any(truth[:, 3:5] != 0.0, axis=1))
        maps = batch.maps.numpy().astype(np.float64)
        seeds = list(range(start, start + size))
        for mode, options in CALIBRATED_MODES.items():
            count = min(size, counts[mode] - start)
            if count <= 0:
                continue
            result = raw.predict_batch(maps[:count], geometry, CALIBRATION_SAMPLES, seed=seeds[:count], **options)
            errors[mode].append(result.centre - truth[:count])
            spreads[mode].append(result.half68)
            probs[mode].append(result.class_probs)
            masses[mode].append(result.centre[:, 0])
            if mode == "network":
                noise.append(noise_at_input(result.noise_sigma, maps.shape[-1], predictor.model.config.input_size))
    bins = noise_bin(np.concatenate(noise))
    # a map's cell: its noise bin, its mass and its class probabilities as that mode estimates them (refinement
    # keeps the network's class probabilities; the eight views give their own)
    groups = {mode: (bins[:counts[mode]], mass_bin(np.concatenate(masses[mode])),
                     group_members(np.concatenate(probs[mode]))) for mode in CALIBRATED_MODES}
    # A halo exactly on the pixel grid's centre is the same in all eight views, so their average cancels the
    # network's bias in its centre: no real map is centred to the pixel, so the symmetrized centre's k rest
    # on the maps whose halo is off the centre (on all of them, its centred maps' intervals over-cover).
    rows = np.ones((counts["symmetrized"], len(REPORTED)), dtype=bool)
    rows[:, 3:5] = np.concatenate(off_centre)[:, None]
    fitted = {mode: interval_scales(np.concatenate(errors[mode]), np.concatenate(spreads[mode]), *groups[mode],
                                    rows if mode == "symmetrized" else None)
              for mode in CALIBRATED_MODES}
    return {
        "method": "interval = centre +/- k * spread in (log10 M, log10 r_s, e, centre kpc); spread = "
                  "sqrt(MC Dropout std^2 + learned per-map spread^2) (network; symmetrized: over the pooled "
                  "samples of the map's eight turned and mirrored views) or Laplace std of the fit (refined); "
                  "k = quantile of |err| / spread on the training mixture, per mode and cell: the map's noise "
                  "bin, the bin of its estimated log10 M_vir and the group of its reported class",
        "noise_bin_edges": list(NOISE_BIN_EDGES),
        "noise_bin_variable": "noise sigma per pixel at the network's input resolution (given or estimated); "
                              "each k list has one entry per noise bin: below the first edge, between edges, above",
        "mass_bin_edges": list(MASS_BIN_EDGES),
        "mass_bin_variable": "the mode's estimate of log10 M_vir [Msun]; each noise bin's entry is a list with one "
                             "k per mass bin, from the lightest to the heaviest",
        "groups": GROUPS,
        "group_maps": _maps_per_group(*groups["network"]),
        "refined_group_maps": _maps_per_group(*groups["refined"]),
        "symmetrized_group_maps": _maps_per_group(*groups["symmetrized"]),
        "mc_samples": CALIBRATION_SAMPLES,
        "validation_maps": int(n_maps),
        "refined_validation_maps": int(refined_maps),
        "validation_seed": int(seed),
        **fitted,
    }


def _maps_per_group(noise_bins: np.ndarray, mass_bins: np.ndarray, members: dict[str, np.ndarray]
                    ) -> dict[str, list[list[int]]]:
    """{group: [[maps in each mass bin] per noise bin]}: how many validation maps each k rests on."""
    shape = (len(NOISE_BIN_EDGES) + 1, len(MASS_BIN_EDGES) + 1)
    counts = {}
    for group, chosen in members.items():
        cells = np.zeros(shape, dtype=int)
        np.add.at(cells, (noise_bins[chosen], mass_bins[chosen]), 1)
        counts[group] = cells.tolist()
    return counts


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="refit the uncertainty calibration of trained weights")
    parser.add_argument("--weights", required=True, help="directory with pinn.safetensors + pinn_card.json")
    parser.add_argument("--n", type=at_least(1, "validation maps"), default=24_000,
                        help="validation maps (network mode)")
    parser.add_argument("--n-refined", type=at_least(1, "validation maps"), default=3000,
                        help="the first of them that also calibrate refinement")
    parser.add_argument("--seed", type=SEED, default=10_001, help="validation seed (not used in training)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights)
    predictor = Predictor.from_files(directory / WEIGHTS_NAME, directory / CARD_NAME)
    card = dict(predictor.card)
    recipe = DataRecipe.from_dict(card["data_recipe"])
    card["calibration"] = fit_calibration(predictor, recipe, args.n, args.seed, args.n_refined)
    card["calibration_command"] = invoked_command()  # a refit after training, on record
    write_card(card, directory)
    print(json.dumps(card["calibration"]))
    return 0
