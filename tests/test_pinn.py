"""The PINN: shipped weights meet their targets on fresh maps; training, MC Dropout and refinement behave."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lensing import MapRequest, generate_map
from lensing.cosmology import lens_geometry
from lensing.pinn.calibration import fit_calibration
from lensing.pinn.checkpoint import (
    CARD_NAME,
    PACKAGE_WEIGHTS_DIR,
    WEIGHTS_NAME,
    export_weights,
    load_pretrained,
    load_weights,
)
from lensing.pinn.data import DataRecipe, make_batch
from lensing.pinn.encoding import REPORTED
from lensing.pinn.evaluate import EVALUATION_SETS, NOMINAL, evaluate, run_set, summarise_set
from lensing.pinn.interval_groups import CORED, MASS_BIN_EDGES, SUBSTRUCTURE, mass_bin
from lensing.pinn.model import PINN, Locator, PINNConfig
from lensing.pinn.physics import render_theta
from lensing.pinn.predictor import MapGeometry, Predictor
from lensing.pinn.preprocess import noise_feature, prepare_input
from lensing.pinn.refine import THETA_BOX, refine_theta
from lensing.pinn.sampling import dropout_masks, sample_theta
from lensing.pinn.train import load_config, train
from lensing.scenarios import SCENARIOS
from lensing.synthetic import sample_hosts
from tests.rounding import close_up_to_round_off

REPO = Path(__file__).resolve().parent.parent
HELD_OUT_SEED = 4242  # never used by training (seed 3) or calibration (seed 10003)
N_HELD_OUT = 600


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_package(device="cpu")


@pytest.fixture(scope="module")
def smooth_network(predictor):
    return summarise_set(run_set(predictor, N_HELD_OUT, HELD_OUT_SEED, EVALUATION_SETS["smooth"], 50, False))


@pytest.fixture(scope="module")
def smooth_refined(predictor):
    return summarise_set(run_set(predictor, N_HELD_OUT, HELD_OUT_SEED, EVALUATION_SETS["smooth"], 50, True))


def _card_block(predictor: Predictor, name: str, mode: str = "network") -> dict:
    return predictor.card["metrics"]["sets"][name][mode]


def median_slack(n: int, sigmas: float) -> float:
    """Relative slack of a median of |error| over n maps: `sigmas` standard errors. The standard error of a
    sample median of a half-normal |error| is about 1.2 m / sqrt(n): 7 % of m at 300 maps, 5 % at 600 (on 2.2,
    a bootstrap gives 9 % on the 300 noisy test maps and, scaled from the card's 2,000 smooth maps, 5.4 % at
    600: the tails are a little heavier)."""
    return sigmas * 1.2 / float(np.sqrt(n))


def _no_worse_than_card(block: dict, card: dict, keys: tuple[str, ...]) -> None:
    """Medians of |error| on fresh maps are within 3 standard errors (`median_slack`) of the card's 2,000-map
    figures: a median of a few hundred maps moves by several per cent, a regression by much more."""
    for key in keys:
        assert block[key] <= card[key] * (1 + median_slack(block["n_maps"], 3.0)), (key, block[key], card[key])


def _meets_goal(block: dict, key: str, goal: float) -> bool:
    """A median of |error| over the block's maps within 2.5 standard errors of a goal (the slack the coverage
    goals get too)."""
    return block[key] <= goal * (1 + median_slack(block["n_maps"], 2.5))


def test_network_accuracy_matches_card(smooth_network, predictor):
    """On 600 fresh smooth maps the network is as accurate as its card says (M, r_s, e, centre)."""
    _no_worse_than_card(smooth_network, _card_block(predictor, "smooth"),
                        ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de", "median_abs_dcenter_kpc"))


def test_network_accuracy_goals_met(smooth_network):
    """Goals the shipped 2.6 network meets on smooth maps: 5 % in r_s, 0.02 in e, 2 kpc in the centre."""
    assert smooth_network["median_rel_err_rs"] <= 0.05
    assert smooth_network["median_abs_de"] <= 0.02
    assert smooth_network["median_abs_dcenter_kpc"] <= 2.0


def test_network_mass_goal(smooth_network):
    """Goal: 0.02 dex in M on smooth maps, up to the sampling error of a median of 600 maps. The 2.5 card has
    0.0136 on 2,000 maps (2.3: 0.0193; 2.2: 0.0202, bootstrap standard error 0.0006). 2.1's 0.024 is outside
    this slack."""
    assert _meets_goal(smooth_network, "median_abs_dlog10_M", 0.02)


@pytest.mark.slow  # refines hundreds of maps (about a minute)
def test_refined_accuracy_targets(smooth_refined, smooth_network):
    """With physics refinement: 0.005 dex, 1 %, 0.005, and better than the network alone."""
    assert smooth_refined["median_abs_dlog10_M"] <= 0.005
    assert smooth_refined["median_rel_err_rs"] <= 0.01
    assert smooth_refined["median_abs_de"] <= 0.005
    assert smooth_refined["median_abs_dlog10_M"] < smooth_network["median_abs_dlog10_M"]


@pytest.mark.slow  # needs the refined evaluation
@pytest.mark.parametrize("mode", ["network", "refined"])
def test_calibrated_coverage_on_smooth_maps(mode, request, predictor):
    """Intervals on 600 fresh smooth maps, with and without refinement, cover as the card says they do."""
    block = request.getfixturevalue(f"smooth_{mode}")
    _coverage_as_card_says(block, _card_block(predictor, "smooth", mode), N_HELD_OUT)


@pytest.fixture(scope="module")
def scenario_network(predictor):
    return summarise_set(run_set(predictor, N_HELD_OUT, HELD_OUT_SEED + 1, EVALUATION_SETS["scenarios"], 20, False))


def test_scenario_accuracy_matches_card(predictor, scenario_network):
    """Scenario classification on fresh maps with scenarios is at least what the model card reports,
    within the binomial error of 600 maps (3 standard errors)."""
    card_accuracy = predictor.card["metrics"]["scenario_accuracy"]
    stderr = np.sqrt(card_accuracy * (1 - card_accuracy) / N_HELD_OUT)
    assert scenario_network["scenario_accuracy"] >= card_accuracy - 3 * stderr
    assert scenario_network["scenario_accuracy"] > 0.6  # far above the 1/4 of guessing


@pytest.mark.xfail(strict=True, reason="goal missed by the shipped 2.6 network: 0.860 +- 0.004 on 10,000 maps "
                                       "(card; 0.893 over all draws with three classes), against 0.92")
def test_scenario_accuracy_goal(scenario_network):
    """Goal: scenario accuracy at least 0.92 (600 fresh maps, 2.5 binomial standard errors)."""
    assert scenario_network["scenario_accuracy"] >= 0.92 - 2.5 * np.sqrt(0.92 * 0.08 / N_HELD_OUT)


# --- realistic maps: noise, off-centre halos, smooth maps as "none" -------------------------------------

N_SET = 300
COVERAGE_SETS = ("smooth", "noisy_sigma_0.01", "off_centre", "scenarios", "all_at_once")


_HELD_OUT: dict[tuple[str, int, bool], dict] = {}


def _held_out(predictor: Predictor, name: str, mc_samples: int = 50, symmetrize: bool = False) -> dict:
    """Summary of N_SET fresh maps of one evaluation set (computed once per set, mc_samples and mode)."""
    if (name, mc_samples, symmetrize) not in _HELD_OUT:
        seed = HELD_OUT_SEED + 100 + list(EVALUATION_SETS).index(name)
        _HELD_OUT[name, mc_samples, symmetrize] = summarise_set(run_set(
            predictor, N_SET, seed, EVALUATION_SETS[name], mc_samples, False, symmetrize))
    return _HELD_OUT[name, mc_samples, symmetrize]


def _binomial_slack(p: float, n: int = N_SET, sigmas: float = 2.5) -> float:
    return sigmas * float(np.sqrt(p * (1 - p) / n))


@pytest.mark.slow  # 300 maps per set, 50 MC samples
@pytest.mark.parametrize("name", COVERAGE_SETS)
def test_coverage_on_every_kind_of_map(predictor, name):
    """Network intervals on 300 fresh maps of each kind. Where the card says a quantity meets the goal (within
    5 points of 68 %, 3 of 95 %), it does here, up to 2.5 binomial standard errors of 300 maps; where the card
    admits a miss, the coverage is the one the card reports (3 standard errors of the difference): the card
    neither flatters the model nor hides a failure."""
    _coverage_as_card_says(_held_out(predictor, name), _card_block(predictor, name), N_SET)


@pytest.mark.slow  # 300 maps per set, 8 views of 50 MC samples each
@pytest.mark.parametrize("name", ("noisy_sigma_0.01", "all_at_once"))
def test_symmetrized_coverage_and_accuracy(predictor, name):
    """The network pooled over the eight views of each map: its own calibration covers as the card says, and
    it is no less accurate than the card says."""
    block = _held_out(predictor, name, symmetrize=True)
    card = _card_block(predictor, name, "symmetrized")
    _coverage_as_card_says(block, card, N_SET)
    _no_worse_than_card(block, card, ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de"))


@pytest.mark.slow  # 600 maps per noise level, 50 MC samples
@pytest.mark.parametrize("name", ("noisy_sigma_0.005", "noisy_sigma_0.01", "noisy_sigma_0.02"))
def test_faint_and_massive_halos_alike_are_covered_on_noisy_maps(predictor, name):
    """A set's coverage can hold on average while faint halos under-cover and massive ones over-cover. On 600
    noisy maps, the 68 % intervals cover within 5 points of nominal (plus 2.5 binomial standard errors) for the
    lighter half of the box's hosts (M_vir below 10^12.5 Msun) and the heavier half alike, for every quantity.
    With one k per noise bin (2.4.0's calibration) these maps gave 46-68 % for the light half and 73-93 % for
    the heavy half, failing at every noise level; the k of each estimated-mass bin (`interval_groups`) are
    what this checks."""
    arrays = run_set(predictor, N_HELD_OUT, HELD_OUT_SEED + 300, EVALUATION_SETS[name], 50, False)
    err = arrays["centre"] - arrays["truth"]
    light = arrays["truth"][:, 0] < MASS_BIN_EDGES[1]  # 10^12.5 Msun, the middle of the box
    for half in (light, ~light):
        covered = np.mean(np.abs(err[half]) <= arrays["half68"][half], axis=0)
        slack = 0.05 + _binomial_slack(NOMINAL["68"], int(half.sum()))
        assert np.all(np.abs(covered - NOMINAL["68"]) <= slack), (dict(zip(REPORTED, covered)), slack)


@pytest.mark.slow  # 3,000 maps with substructure, 50 MC samples
def test_cored_and_other_hosts_alike_are_covered_on_maps_with_substructure(predictor):
    """An SIDM host is cored, so its mass and r_s errors are about twice a CDM or WDM host's. With one k for
    every map reported as carrying substructure (2.5.0's calibration), on these clean maps with scenarios M's
    68 % interval covered 57 % of SIDM hosts and 83 % of CDM hosts (r_s 48 % and 83 %). Each class group of
    `interval_groups` (none; CDM or WDM; SIDM) has its own k now: no scenario's hosts may under-cover by more
    than 5 points (plus 2.5 binomial standard errors) in M, r_s or e. CDM and WDM share a k, so CDM's
    intervals may over-cover: by at most 10 points (and the same slack)."""
    spec = EVALUATION_SETS["scenarios"]
    arrays = run_set(predictor, 3000, HELD_OUT_SEED + 400, spec, 50, False)
    err = arrays["centre"][:, :3] - arrays["truth"][:, :3]
    for index, scenario in enumerate(SCENARIOS):
        chosen = arrays["scenario"] == index
        covered = np.mean(np.abs(err[chosen]) <= arrays["half68"][chosen, :3], axis=0)
        slack = _binomial_slack(NOMINAL["68"], int(chosen.sum()))
        report = (scenario, dict(zip(REPORTED, covered)), slack)
        assert np.all(covered >= NOMINAL["68"] - 0.05 - slack), report
        assert np.all(covered <= NOMINAL["68"] + 0.10 + slack), report


@pytest.mark.xfail(strict=True, reason="missed by the shipped 2.6 network: 52 % (median error -0.06); a network "
                   "trained to e = 0.7 reached 66 % but lost accuracy on noisy maps (docs/design.md section 5)")
def test_noisy_hosts_near_the_top_of_the_ellipticity_box_are_covered(predictor):
    """Trained on e up to the API box's 0.5, a noisy map of a host near 0.5 has its e pulled towards the middle
    of what the network has seen: at sigma 0.02 the 68 % interval covers 52 % of hosts with e in [0.375, 0.5],
    the one region the 4,000-map sweep flags. Their e should be covered within 5 points of 68 % (plus 2.5
    binomial standard errors), as on average over the box."""
    n, geometry = 400, MapGeometry()
    rng = np.random.default_rng(HELD_OUT_SEED + 500)
    hosts = sample_hosts(n, rng, scenario_probability=0.75, ellipticity_range=(0.375, 0.5))
    batch = make_batch(n, rng, DataRecipe(), geometry=geometry.lens, fov_kpc=geometry.fov_kpc, noise_sigma=0.02,
                       hosts=hosts)
    result = predictor.predict_batch(batch.maps.numpy().astype(np.float64), geometry, 50, False,
                                     seed=list(range(HELD_OUT_SEED, HELD_OUT_SEED + n)))
    truth = hosts.ellipticity
    covered = float(np.mean(np.abs(result.centre[:, 2] - truth) <= result.half68[:, 2]))
    assert covered >= NOMINAL["68"] - 0.05 - _binomial_slack(NOMINAL["68"], n), covered


def test_a_recipe_past_the_api_box_trains_there_but_calibrates_on_the_box():
    """`ellipticity_range` widens the training hosts' e; the calibration's maps stay within the API box, whose
    halos are the ones the intervals are claimed for."""
    wide = DataRecipe(ellipticity_range=(0.0, 0.7))
    trained = make_batch(300, np.random.default_rng(1), wide, noise_sigma=0.0, scenario_fraction=0.0).hosts
    calibrated = make_batch(300, np.random.default_rng(1), wide.within_api_box(), noise_sigma=0.0,
                            scenario_fraction=0.0).hosts
    assert trained.ellipticity.max() > 0.6 and calibrated.ellipticity.max() <= 0.5
    assert wide.within_api_box() == DataRecipe()


def test_a_card_from_before_the_cored_group_gives_sidm_maps_the_substructure_k(predictor):
    """Cards calibrated before 2.6.0 have two class groups; a map reported as SIDM then takes the k of the
    "substructure" group (where SIDM maps were), so older cards keep working."""
    card = copy.deepcopy(predictor.card)
    for mode in ("network", "refined", "symmetrized"):
        for by_group in card["calibration"][mode].values():
            by_group.pop(CORED)
    older = Predictor(predictor.model, card, predictor.device)
    kappa = generate_map(MapRequest(M_vir=3e12, scale_radius=150.0, scenario="SIDM", seed=1)).convergence
    now, before = (p.predict([kappa], mc_samples=20, seed=1, noise_sigma=0.0)[0] for p in (predictor, older))
    assert now["predicted_class"] == before["predicted_class"] == "SIDM"
    assert now["predictions"] == before["predictions"]
    width = {name: r["uncertainties"]["M_vir_p84"] / r["uncertainties"]["M_vir_p16"] for name, r in
             (("now", now), ("before", before))}
    k = {group: predictor._k_tables["network"]["68"][group][0, 0, mass_bin(np.log10(now["predictions"]["M_vir"]))]
         for group in (CORED, SUBSTRUCTURE)}
    assert np.log(width["before"]) / np.log(width["now"]) == pytest.approx(k[SUBSTRUCTURE] / k[CORED], rel=1e-6)


def _coverage_as_card_says(block: dict, card: dict, n: int) -> None:
    """Where the card says a quantity meets the coverage goal, it does on these n maps, up to 2.5 binomial
    standard errors; where the card admits a miss, the coverage is the one it reports (3 standard errors of
    the difference)."""
    for level, goal in (("68", 0.05), ("95", 0.03)):
        nominal = NOMINAL[level]
        for quantity, value in block[f"coverage_{level}"].items():
            if card["coverage_within_goal"][quantity]:
                assert abs(value - nominal) <= goal + _binomial_slack(nominal, n), (level, quantity, value)
            else:
                reported = card[f"coverage_{level}"][quantity]
                spread = np.sqrt(reported * (1 - reported) * (1 / n + 1 / card["n_maps"]))
                assert abs(value - reported) <= 3 * spread + 1e-3, (level, quantity, value, reported)


@pytest.fixture(scope="module")
def noisy_network(predictor):
    return _held_out(predictor, "noisy_sigma_0.01")  # 50 samples, as the card and the coverage test


@pytest.mark.slow  # 300 maps
def test_noisy_maps_accuracy_matches_card(predictor, noisy_network):
    """sigma_kappa = 0.01, network alone: as accurate as the card says, and the noise estimate within 5 %."""
    _no_worse_than_card(noisy_network, _card_block(predictor, "noisy_sigma_0.01"),
                        ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de"))
    assert _meets_goal(noisy_network, "median_abs_de", 0.03)  # the goal in e, which 2.5 meets (0.026)
    assert noisy_network["median_noise_sigma_estimate"] == pytest.approx(0.01, rel=0.05)


N_GOAL = 2000  # maps for a goal the model misses by less than a 300-map median can resolve


@pytest.mark.slow  # 2,000 maps (about 10 s)
@pytest.mark.xfail(strict=True, reason="goals missed by the shipped 2.6 network at sigma 0.01: 0.042 dex and "
                                       "8.5 % (card) against 0.04 and 8 % (2.3 had 0.044 and 8.6 %, 2.1 0.043 "
                                       "dex and 7.5 %)")
def test_noisy_maps_mass_and_scale_goals(predictor):
    """Goals at sigma_kappa = 0.01, network alone: 0.04 dex in M and 8 % in r_s (medians of |error|), on 2,000
    fresh maps as the card measures them. The model sits 5-6 % above both goals, where 300 maps give a
    median to +-7 % (one standard error) and pass within any honest tolerance; at 2,000 maps the median's
    standard error is ~3 %, and the goal is read as the card reads it, without slack."""
    seed = HELD_OUT_SEED + 200  # not a seed of the card (777 + set) or of the other tests
    block = summarise_set(run_set(predictor, N_GOAL, seed, EVALUATION_SETS["noisy_sigma_0.01"], 50, False))
    assert block["median_abs_dlog10_M"] <= 0.04
    assert block["median_rel_err_rs"] <= 0.08


@pytest.mark.slow  # 2,000 maps, 8 views each (about 40 s)
def test_symmetrized_noisy_maps_meet_the_mass_goal(predictor):
    """At sigma_kappa = 0.01 the network pooled over each map's eight views meets the 0.04 dex goal in M (card:
    0.038) on 2,000 fresh maps, without slack, and beats the plain network on the same maps in M and r_s
    (its r_s, 8.0 % on the card, sits on the 8 % goal's edge and is not asserted against it)."""
    seed, spec = HELD_OUT_SEED + 200, EVALUATION_SETS["noisy_sigma_0.01"]
    views = summarise_set(run_set(predictor, N_GOAL, seed, spec, 50, False, symmetrize=True))
    plain = summarise_set(run_set(predictor, N_GOAL, seed, spec, 50, False))
    assert views["median_abs_dlog10_M"] <= 0.04
    assert views["median_abs_dlog10_M"] < plain["median_abs_dlog10_M"]
    assert views["median_rel_err_rs"] < plain["median_rel_err_rs"]


def test_smooth_maps_are_reported_as_none(predictor):
    """A smooth halo has no detectable substructure: "none" for at least 90 % of smooth maps (300 fresh maps,
    2.5 binomial standard errors)."""
    block = _held_out(predictor, "smooth", mc_samples=10)
    assert block["none_rate_on_smooth"] >= 0.90 - _binomial_slack(0.90)


def test_off_centre_halos_are_located(predictor):
    """Halos up to 10 % of the field off the map centre: the centre within 2 kpc (median) on clean maps, r_s
    within the smooth-map goal (5 %), and M, r_s as accurate as the card says."""
    block = _held_out(predictor, "off_centre")  # 50 samples, as the card: a 10-sample mean is noisier
    assert block["median_abs_dcenter_kpc"] <= 2.0
    assert block["median_rel_err_rs"] <= 0.05
    _no_worse_than_card(block, _card_block(predictor, "off_centre"), ("median_abs_dlog10_M", "median_rel_err_rs"))


def test_substructure_branch_reads_the_unshifted_map(predictor):
    """The substructure branch sees the map's own pixels, not the locator's sub-pixel (bilinear) shifted copy,
    which would average every one-pixel subhalo bump with its neighbours; the main encoder sees the shift."""
    model = predictor.model
    batch = make_batch(8, np.random.default_rng(11), DataRecipe(), noise_sigma=0.0, scenario_fraction=1.0,
                       max_offset=0.1)
    x = prepare_input(batch.maps, model.config.input_size)
    noise = noise_feature(torch.zeros(8), x.shape[-1], model.config.input_size)
    with torch.inference_mode():
        features, offset = model.features(x, noise)
        centred, _ = model.locator(x)
        from_raw = model.encoder.detail(x)
        from_centred = model.encoder.detail(centred)
    width = model.encoder.detail.out_dim
    assert float(offset.abs().max()) * model.config.input_size > 1.0  # these halos are shifted by pixels
    assert torch.allclose(features[:, -width:], from_raw, atol=1e-6)
    assert not torch.allclose(features[:, -width:], from_centred, atol=1e-3)


@pytest.mark.parametrize("max_offset", [0.0, 0.1])
def test_locator_puts_the_peak_on_the_centre(max_offset):
    """The fixed locator (no weights) finds the peak of clean elliptical hosts to a few hundredths of a pixel,
    as well for a halo on the map's central pixel corner (max_offset 0) as off it. A vertex fitted along the
    pixel row and column alone misses a tilted elliptical peak (median 0.08 px at the corner, 0.04 off it)."""
    batch = make_batch(200, np.random.default_rng(5), DataRecipe(), noise_sigma=0.0, scenario_fraction=0.0,
                       max_offset=max_offset)
    centred, offset = Locator()(prepare_input(batch.maps, 64))
    error_px = (offset - batch.theta[:, 4:]).abs() * 64
    assert float(error_px.median()) < 0.02 and float(error_px.quantile(0.9)) < 0.12
    assert centred.shape == (200, 3, 64, 64)


def test_noise_sigma_is_given_or_estimated(predictor):
    kappa = generate_map(MapRequest(M_vir=3e12, concentration=7.0, noise_sigma=0.02, seed=2)).convergence
    estimated = predictor.predict([kappa], mc_samples=5, seed=1)[0]
    assert estimated["noise_sigma_source"] == "estimated"
    assert estimated["noise_sigma"] == pytest.approx(0.02, rel=0.05)
    given = predictor.predict([kappa], mc_samples=5, seed=1, noise_sigma=[0.02])[0]
    assert given["noise_sigma_source"] == "given" and given["noise_sigma"] == 0.02
    with pytest.raises(ValueError, match="noise_sigma") as error:
        predictor.predict([kappa], noise_sigma=[-1.0])
    assert error.value.field == "noise_sigma"


def test_evaluate_writes_metrics_and_plots(predictor, tmp_path):
    """`lensing evaluate` on a tiny run: every set, the issue's keys, a scenario set of its own size whose
    accuracy carries its binomial standard error, and the plots."""
    metrics = evaluate(predictor, 12, 555, tmp_path, mc_samples=4, n_scenarios=30)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert set(metrics["sets"]) == set(EVALUATION_SETS) >= {
        "smooth", "other_geometry", "noisy_sigma_0.005", "noisy_sigma_0.01", "noisy_sigma_0.02", "off_centre",
        "scenarios", "all_at_once"}
    assert metrics["sets"]["smooth"]["network"]["n_maps"] == 12
    scenarios = metrics["sets"]["scenarios"]["network"]
    visible = round(30 * (1 - scenarios["share_of_draws_without_substructure_in_field"]))  # empty draws: "none"
    assert scenarios["n_maps"] == 30 and np.sum(scenarios["confusion_matrix"]) == visible
    assert np.shape(scenarios["confusion_matrix"]) == (3, 4)  # true CDM/WDM/SIDM x predicted with "none"
    for block in (mode for modes in metrics["sets"].values() for mode in modes.values()):
        assert set(block["coverage_68"]) == set(block["coverage_95"]) == set(block["coverage_within_goal"]) == {
            "log10_M_vir", "log10_r_s", "ellipticity", "center_x_kpc", "center_y_kpc"}
        assert 0 <= block["inside_training_domain"] <= 1
    assert [name for name, modes in metrics["sets"].items() if not modes["network"]["goals_apply"]] == [
        "galaxy_halos", "galaxy_halos_250_kpc_field"]
    accuracy = metrics["scenario_accuracy"]
    assert metrics["scenario_accuracy_stderr"] == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / visible))
    for key in ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de", "coverage_68", "coverage_95"):
        assert key in metrics and key in metrics["refined"]
    for name, spec in EVALUATION_SETS.items():
        modes = ["network"] + ["refined"] * spec.refine + ["symmetrized"] * spec.goals_apply
        assert list(metrics["sets"][name]) == modes
        for mode in modes:
            for plot in (f"pred_vs_true_{name}_{mode}.png", f"coverage_{name}_{mode}.png"):
                assert (tmp_path / plot).stat().st_size > 1000, plot
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_weights_checksum_is_verified(tmp_path):
    weights = tmp_path / WEIGHTS_NAME
    data = bytearray((PACKAGE_WEIGHTS_DIR / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_weights(weights, PACKAGE_WEIGHTS_DIR / CARD_NAME)


def test_model_card_records_measurements():
    card = json.loads((PACKAGE_WEIGHTS_DIR / CARD_NAME).read_text())
    for key in ("training_command", "data_recipe", "seed", "calibration", "metrics", "sha256"):
        assert key in card
    for key in ("median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de", "scenario_accuracy", "coverage_68",
                "coverage_95", "confusion_matrix"):
        assert key in card["metrics"]
    assert "refined" in card["metrics"]
    assert all("symmetrized" in card["metrics"]["sets"][name] for name, spec in EVALUATION_SETS.items()
               if spec.goals_apply)
    assert 0 < card["metrics"]["scenario_accuracy_stderr"] < 0.01
    markdown = (PACKAGE_WEIGHTS_DIR / "pinn_card.md").read_text()
    for text in ("M [dex]", "accuracy", "Confusion matrix", "68 % coverage", "k68", *EVALUATION_SETS):
        assert text in markdown, text


@pytest.mark.slow  # refines 60 maps
def test_refinement_is_calibrated_on_the_first_validation_maps(predictor):
    """The network's k rest on every validation map, refinement's (each fit ~70 ms) on the first
    `refined_maps`; the card says how many maps each group and bin had in each mode."""
    calibration = fit_calibration(predictor, DataRecipe(), n_maps=250, seed=10_003, refined_maps=60)
    assert calibration["validation_maps"] == 250 and calibration["refined_validation_maps"] == 60
    assert sum(np.sum(cells) for cells in calibration["group_maps"].values()) == 250
    assert sum(np.sum(cells) for cells in calibration["refined_group_maps"].values()) == 60
    assert sum(np.sum(cells) for cells in calibration["symmetrized_group_maps"].values()) == 250
    for mode in ("network", "refined", "symmetrized"):
        for level in ("68", "95"):
            for k_per_cell in calibration[mode][level]["none"].values():
                assert np.shape(k_per_cell) == (len(calibration["noise_bin_edges"]) + 1,
                                                len(calibration["mass_bin_edges"]) + 1)
                assert np.all(np.isfinite(k_per_cell)) and np.all(np.asarray(k_per_cell) > 0)


def test_shipped_weights_come_from_the_repository_config():
    """The card's training config is configs/train/pinn.yaml as it stands: the README's command retrains them."""
    card = json.loads((PACKAGE_WEIGHTS_DIR / CARD_NAME).read_text())
    assert card["training_config"] == load_config(REPO / "configs/train/pinn.yaml").model_dump()
    assert card["initialised_from"] is None


# --- MC Dropout -----------------------------------------------------------------------------------


def _maps(n: int = 4) -> np.ndarray:
    return np.stack([generate_map(MapRequest(M_vir=10 ** (11.5 + k * 0.5), scale_radius=80 + 60 * k)).convergence
                     for k in range(n)])


def test_mc_samples_differ_and_mean_converges(predictor):
    maps = _maps(2)
    x = torch.as_tensor(maps, dtype=torch.float32)

    noise = noise_feature(torch.zeros(2), 64, 64)

    def draw(n_samples: int, seeds: list[int]) -> torch.Tensor:
        return sample_theta(predictor.model, prepare_input(x, 64), noise, n_samples, seeds, predictor.scaler)[0]

    theta = draw(400, [1, 2])
    assert theta.std(dim=1).min() > 0  # samples differ
    reference = theta.mean(dim=1)
    big = draw(4000, [9, 10])
    small_dev = (draw(10, [3, 4]).mean(1) - big.mean(1)).abs().mean()
    large_dev = (reference - big.mean(1)).abs().mean()
    assert large_dev < small_dev  # the mean of 400 samples is closer to the 4000-sample mean than 10 samples


def test_mc_samples_one_is_the_deterministic_network(predictor):
    """Documented semantics: mc_samples = 1 runs the network with dropout off; no uncertainties."""
    maps = _maps(2)
    first = predictor.predict_batch(maps, mc_samples=1, seed=1)
    second = predictor.predict_batch(maps, mc_samples=1, seed=2)
    assert first.uncertainties is None
    assert np.array_equal(first.values["M_vir"], second.values["M_vir"])
    assert np.all(first.mutual_information == 0)


def test_the_estimate_is_the_deterministic_network_at_any_mc_samples(predictor):
    """The reported value is the network with dropout off (a sample mean would carry dropout's scatter): the
    same at 1, 10 and 50 samples and for any seed; only the uncertainties come from the samples."""
    maps = _maps(3)
    alone = predictor.predict_batch(maps, mc_samples=1, seed=0)
    for mc_samples, seed in ((10, 1), (50, 2), (50, 3)):
        sampled = predictor.predict_batch(maps, mc_samples=mc_samples, seed=seed)
        np.testing.assert_allclose(sampled.centre, alone.centre, rtol=1e-12, atol=1e-12)
        assert sampled.half68 is not None and (sampled.half68 > 0).all()
    wide, narrow = (predictor.predict_batch(maps, mc_samples=50, seed=s).half68 for s in (2, 3))
    assert not np.array_equal(wide, narrow)  # the spread does come from the seeded samples


def test_every_dropout_site_is_active_when_sampling(predictor):
    """All stochastic layers of the model are the head's explicit dropout sites, and sampling masks each."""
    model = predictor.model
    assert not [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))]
    masks = dropout_masks(model, 50, [0, 1], torch.device("cpu"))
    assert len(masks) == model.head.n_dropout_sites
    for mask, dim in zip(masks, model.head.site_dims):
        assert mask.shape == (100, dim)
        zero_fraction = float((mask == 0).float().mean())
        assert abs(zero_fraction - model.head.p) < 0.05
    features = torch.randn(100, model.head.hidden.in_features)  # the noise feature, then the encoder's
    ones = tuple(torch.ones_like(m) for m in masks)
    for site in range(len(masks)):
        only_one = tuple(masks[i] if i == site else ones[i] for i in range(len(masks)))
        assert not torch.equal(model.head(features, only_one)[0], model.head(features, ones)[0])


def _assert_records_close(a: dict, b: dict) -> None:
    """Equal up to float32 rounding (`tests/rounding.py`): oneDNN picks other kernels for other batch sizes."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_records_close(value, b[key])
        elif isinstance(value, float):
            assert close_up_to_round_off(key, value, b[key]), (key, value, b[key])
        else:
            assert value == b[key], key


def test_results_do_not_depend_on_batch_neighbours(predictor):
    maps = _maps(3)
    alone = predictor.predict([maps[1]], mc_samples=20, seed=[7])[0]
    together = predictor.predict(list(maps), mc_samples=20, seed=[5, 7, 9])[1]
    shuffled = predictor.predict([maps[2], maps[1]], mc_samples=20, seed=[1, 7])[1]
    _assert_records_close(alone, together)
    _assert_records_close(alone, shuffled)
    other_seed = predictor.predict([maps[1]], mc_samples=20, seed=[8])[0]
    assert other_seed["uncertainties"]["M_vir_std"] != alone["uncertainties"]["M_vir_std"]


def test_mixed_sizes_and_sample_counts(predictor):
    small = generate_map(MapRequest(M_vir=3e12, scale_radius=150, grid_size=32)).convergence
    large = generate_map(MapRequest(M_vir=3e12, scale_radius=150, grid_size=128)).convergence
    results = predictor.predict([small, large, small], mc_samples=[5, 10, 1], refine=[False, True, False], seed=0,
                                max_mc_work=7)
    assert [r["mc_samples"] for r in results] == [5, 10, 1]
    assert results[1]["refined"] and results[2]["uncertainties"] is None
    assert abs(np.log10(results[1]["predictions"]["M_vir"] / 3e12)) < 0.01


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 5)), "square"),
        (np.full((32, 32), np.nan), "NaN"),
        (np.zeros((8, 8)), "size"),
        (np.array([["a"]]), "numeric"),
        (np.full((32, 32), 2e4), "within"),  # beyond the model's input domain (MAX_ABS_KAPPA)
    ],
)
def test_bad_maps_raise(predictor, bad, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict([bad])


def test_refinement_of_maps_that_are_no_halo_stays_finite(predictor):
    """Noise at the edge of the input domain: the fit may not improve on the network, but it must neither
    fail (a singular damped system) nor run off to overflowing parameters or intervals."""
    rng = np.random.default_rng(11)
    maps = [rng.uniform(-1e4, 1e4, (n, n)) * (rng.uniform(size=(n, n)) < 0.5) for n in (16, 32, 64) for _ in range(4)]
    theta, covariance = refine_theta(torch.zeros(len(maps[:4]), 6), torch.as_tensor(np.stack(maps[:4])))
    assert torch.isfinite(theta).all() and torch.isfinite(covariance).all()
    for (low, high), column in zip(THETA_BOX, theta[:, :2].T):
        assert ((column >= low) & (column <= high)).all()
    for result in predictor.predict(maps, mc_samples=5, refine=True, seed=1):  # spreads capped: "unconstrained"
        assert np.isfinite([*result["predictions"].values(), *result["uncertainties"].values()]).all()


def test_refinement_leaves_masked_pixels_out_of_the_fit():
    """A bright blob beside a smooth host pulls a plain fit off the host; leaving its pixels out of the fit
    (`mask`) recovers the host as exactly as on the smooth map."""
    rng = np.random.default_rng(5)
    batch = make_batch(4, rng, DataRecipe(), geometry=lens_geometry(), fov_kpc=1000.0, noise_sigma=0.0,
                       scenario_fraction=0.0, max_offset=0.05)
    truth = batch.theta.double()
    maps = render_theta(truth, 64)
    blob = torch.zeros_like(maps)
    blob[:, 40:43, 20:23] = 0.05 * maps.amax(dim=(1, 2))[:, None, None]
    start = truth + torch.tensor([0.05, -0.05, 0.03, -0.02, 0.004, -0.003], dtype=torch.float64)
    plain, _ = refine_theta(start, maps + blob, steps=20)
    masked, _ = refine_theta(start, maps + blob, steps=20, mask=blob == 0)
    assert (plain - truth).abs().amax() > 1e-3
    assert (masked - truth).abs().amax() < 1e-6


def test_geometry_conversion_is_physical(predictor):
    """The same pixels at another geometry give the masses the physics conversion implies."""
    request = MapRequest(M_vir=5e12, scale_radius=120)
    kappa = generate_map(request).convergence
    default = predictor.predict_batch(kappa, mc_samples=1, refine=True)
    other_geometry = MapGeometry(fov_kpc=1000.0, z_lens=0.3, z_source=1.5)
    other = predictor.predict_batch(kappa, other_geometry, mc_samples=1, refine=True)
    # Same pixels -> same kappa_s and r_s/fov; M follows from Sigma_cr and rho_crit of each geometry.
    from lensing.halo import HaloParameters

    halo = HaloParameters(float(other.values["M_vir"][0]), float(other.values["r_s"][0]), other_geometry.lens)
    truth = HaloParameters(5e12, 120.0, MapGeometry().lens)
    assert halo.kappa_s == pytest.approx(truth.kappa_s, rel=1e-3)
    assert default.values["M_vir"][0] == pytest.approx(5e12, rel=3e-3)


# --- training -------------------------------------------------------------------------------------


@pytest.mark.slow  # trains
def test_training_from_scratch_reduces_loss_and_resumes(tmp_path):
    overrides = {"steps": 40, "batch_size": 32, "warmup_steps": 5, "checkpoint_every": 20, "validation_maps": 100,
                 "log_every": 1, "learning_rate": 3e-3,
                 "physics_maps": 8, "architecture": {"widths": [16, 32, 64], "feature_dim": 64, "head_hidden": 64},
                 # clean smooth centred maps: 40 steps of a small network show learning on these, not on the
                 # full mixture
                 "data": {"scenario_fraction": 0.0, "noisy_fraction": 0.0, "offset_fraction": 0.0}}
    config = load_config(REPO / "configs/train/pinn.yaml", overrides)
    card = train(config, tmp_path, resume=False, command="test")
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 40
    # the supervised term: the total also holds the spread's NLL, which can go negative, and the
    # classification, which moves little in 40 steps
    supervised = [entry["sup"] for entry in history]
    assert np.mean(supervised[-10:]) < 0.8 * np.mean(supervised[:10])
    assert (tmp_path / WEIGHTS_NAME).exists() and card["sha256"]
    resumed = train(load_config(REPO / "configs/train/pinn.yaml", overrides | {"steps": 50}), tmp_path, command="test")
    assert resumed["training_config"]["steps"] == 50
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 50  # resumed at step 40, not 0
    model, _ = load_weights(tmp_path / WEIGHTS_NAME, tmp_path / CARD_NAME)
    assert model.config.widths == (16, 32, 64)


@pytest.mark.slow  # trains
def test_fine_tuning_can_add_the_substructure_branch(tmp_path):
    """--init-from into an architecture with the substructure branch starts from the source's exact outputs."""
    small = {"widths": (8, 16, 32), "feature_dim": 32, "head_hidden": 32}
    torch.manual_seed(0)
    source = PINN(PINNConfig(**small)).eval()
    export_weights(source, {"name": "PINN"}, tmp_path)
    extended = PINN(PINNConfig(**small, detail_widths=(4, 8))).eval()
    new = load_pretrained(extended, tmp_path / WEIGHTS_NAME, tmp_path / CARD_NAME)
    source_columns = 1 + small["feature_dim"]  # the noise feature, then the encoder's features
    assert f"head.hidden.weight[:, {source_columns}:]" in new
    assert any(name.startswith("encoder.detail.") for name in new)
    x = prepare_input(torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in _maps(2)]), 64)
    noise = noise_feature(torch.tensor([0.0, 0.01]), 64, 64)
    with torch.no_grad():
        for before, after in zip(source(x, noise), extended(x, noise)):
            assert torch.allclose(before, after, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(PINN(PINNConfig(**(small | {"head_hidden": 16}))), tmp_path / WEIGHTS_NAME,
                        tmp_path / CARD_NAME)
