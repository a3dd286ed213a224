"""Uncertainty calibration: per-parameter scales that make nominal 68 % / 95 % intervals honest.

For each reported quantity (log10 M, log10 r_s, e, centre x and y) the interval is centre +/- k * raw
spread: for the network alone the raw spread is sqrt(epistemic^2 + aleatoric^2) (MC Dropout standard
deviation and the head's learned per-map spread), with refinement the fit's Laplace standard deviation.
The validation set is drawn from the training mixture (noise, off-centre halos, scenarios, other
geometries; a seed never used in training), with the noise estimated from each map as the service does
by default; k68 and k95 are the 68th and 95th percentiles of |error| / raw spread, per mode and per
group: the map's noise bin crossed with whether it is reported as "none" (`interval_groups`, which says
why). `lensing evaluate` measures the coverage this gives on each kind of map separately.

Ten groups need many maps: a quantile of a few hundred ratios moves by several per cent from one
validation seed to the next, and so did the coverage (2.2.0 weights, 3,000 maps: 73 of the 80 network
coverage figures within goal on the evaluation seed, 67 on another; 12,000 maps: 77 and 75). The
network's k come from `n_maps` maps (cheap: ~1.5 ms a map); the refined k from the first `refined_maps`
of them, because each refinement costs ~70 ms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..cosmology import MapGeometry
from ..scenarios import NO_SUBSTRUCTURE
from .checkpoint import CARD_NAME, WEIGHTS_NAME, write_card
from .data import DataRecipe, make_batch
from .encoding import REPORTED, reported_array
from .interval_groups import NOISE_BIN_EDGES, SUBSTRUCTURE, group_members, noise_bin
from .predictor import Predictor
from .preprocess import noise_at_input

CALIBRATION_SAMPLES = 50
LEVELS = {"68": 0.6827, "95": 0.9545}
MIN_GROUP_MAPS = 30  # fewest maps whose quantile k is trusted for one group and noise bin


def interval_scales(errors: np.ndarray, raw_std: np.ndarray, bins: np.ndarray,
                    members: dict[str, np.ndarray]) -> dict:
    """{level: {group: {parameter: [k per noise bin]}}}, k the level-quantile of |error| / raw_std among the
    maps of that group and bin. A bin with fewer than MIN_GROUP_MAPS maps takes its group's k over all
    bins (the card's `group_maps` shows which), so that no map is left without an interval."""
    ratio = np.abs(errors) / np.clip(raw_std, 1e-12, None)
    n_bins = len(NOISE_BIN_EDGES) + 1

    def k(group: str, b: int, i: int, q: float) -> float:
        chosen = ratio[members[group] & (bins == b), i]
        if chosen.size < MIN_GROUP_MAPS:
            chosen = ratio[members[group], i] if members[group].sum() >= MIN_GROUP_MAPS else ratio[:, i]
        return float(np.quantile(chosen, q))

    return {
        level: {group: {name: [k(group, b, i, q) for b in range(n_bins)] for i, name in enumerate(REPORTED)}
                for group in members}
        for level, q in LEVELS.items()
    }


def fit_calibration(predictor: Predictor, recipe: DataRecipe, n_maps: int, seed: int, refined_maps: int | None = None,
                    chunk: int = 125) -> dict:
    """Fit interval scales for 'network' (on `n_maps` validation maps from the training mixture) and
    'refined' mode (on the first `refined_maps` of them; default all).

    The maps go through the Predictor without calibration, whose half-widths are then the raw spreads.
    """
    raw = predictor.uncalibrated()
    refined_maps = n_maps if refined_maps is None else min(refined_maps, n_maps)
    rng = np.random.default_rng(seed)
    errors: dict[bool, list] = {False: [], True: []}
    spreads: dict[bool, list] = {False: [], True: []}
    noise: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for start in range(0, n_maps, chunk):
        size = min(chunk, n_maps - start)
        batch = make_batch(size, rng, recipe)
        lens = batch.geometries[0]
        geometry = MapGeometry(float(batch.fov_kpc[0]), lens.z_lens, lens.z_source)
        truth = reported_array(batch.theta.double().numpy(), lens, geometry.fov_kpc)
        maps = batch.maps.numpy().astype(np.float64)
        seeds = list(range(start, start + size))
        result = raw.predict_batch(maps, geometry, CALIBRATION_SAMPLES, False, seeds)
        errors[False].append(result.centre - truth)
        spreads[False].append(result.half68)
        # a map's group is the same in both modes: its noise and the network's class probabilities
        noise.append(noise_at_input(result.noise_sigma, maps.shape[-1], predictor.model.config.input_size))
        probs.append(result.class_probs)
        refined = min(size, refined_maps - start)
        if refined > 0:
            result = raw.predict_batch(maps[:refined], geometry, CALIBRATION_SAMPLES, True, seeds[:refined])
            errors[True].append(result.centre - truth[:refined])
            spreads[True].append(result.half68)
    bins, members = noise_bin(np.concatenate(noise)), group_members(np.concatenate(probs))
    # each mode's maps: all of them for the network, the first refined_maps for refinement
    groups = {refine: (bins[:count], {group: chosen[:count] for group, chosen in members.items()})
              for refine, count in ((False, n_maps), (True, refined_maps))}
    fitted = {refine: interval_scales(np.concatenate(errors[refine]), np.concatenate(spreads[refine]), *groups[refine])
              for refine in groups}
    return {
        "method": "interval = centre +/- k * spread in (log10 M, log10 r_s, e, centre kpc); spread = "
                  "sqrt(MC Dropout std^2 + learned per-map spread^2) (network) or Laplace std of the fit "
                  "(refined); k = quantile of |err| / spread on the training mixture, per group: the map's "
                  "noise bin and whether it is reported as 'none'",
        "noise_bin_edges": list(NOISE_BIN_EDGES),
        "noise_bin_variable": "noise sigma per pixel at the network's input resolution (given or estimated); "
                              "each k list has one entry per bin: below the first edge, between edges, above",
        "groups": {NO_SUBSTRUCTURE: "maps whose most probable class is 'none'", SUBSTRUCTURE: "all others"},
        "group_maps": _maps_per_group(*groups[False]),
        "refined_group_maps": _maps_per_group(*groups[True]),
        "mc_samples": CALIBRATION_SAMPLES,
        "validation_maps": int(n_maps),
        "refined_validation_maps": int(refined_maps),
        "validation_seed": int(seed),
        "network": fitted[False],
        "refined": fitted[True],
    }


def _maps_per_group(bins: np.ndarray, members: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """{group: [maps in each noise bin]}: how many validation maps each k rests on."""
    return {group: np.bincount(bins[chosen], minlength=len(NOISE_BIN_EDGES) + 1).tolist()
            for group, chosen in members.items()}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("calibrate", help="refit the uncertainty calibration of trained weights")
    parser.add_argument("--weights", required=True, help="directory with pinn.safetensors + pinn_card.json")
    parser.add_argument("--n", type=int, default=12_000, help="validation maps (network mode)")
    parser.add_argument("--n-refined", type=int, default=3000, help="the first of them that also calibrate refinement")
    parser.add_argument("--seed", type=int, default=10_001, help="validation seed (not used in training)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.weights)
    predictor = Predictor.from_files(directory / WEIGHTS_NAME, directory / CARD_NAME)
    card = dict(predictor.card)
    recipe = DataRecipe.from_dict(card["data_recipe"])
    card["calibration"] = fit_calibration(predictor, recipe, args.n, args.seed, args.n_refined)
    write_card(card, directory)
    print(json.dumps(card["calibration"]))
    return 0
