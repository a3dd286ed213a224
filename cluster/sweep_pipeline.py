"""The sweep's work: shard inputs, and one shard end to end (generate, infer, write), without Ray.

Each shard is a pure function of (config, shard index): its hosts, scenario draws, noise and MC Dropout
seeds all come from numpy's SeedSequence([seed, shard]), so a rerun with the same torch threads and
device rewrites the same rows bit for bit.
`process_shard` is the whole of one shard's work; the Ray actors (`sweep_ray.ShardWorker`) and the
single-process loop of bench/sweep.py both call it, so both produce the same rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from lensing.cosmology import lens_geometry
from lensing.halo import r200_from_mass
from lensing.pinn.predictor import MapGeometry, PredictionBatch, Predictor
from lensing.scenarios import CLASS_NAMES, SCENARIO_CLASS, SCENARIOS
from lensing.synthetic import NO_SCENARIO, HostBatch, generate_batch

from .sweep_config import SMOOTH, GridSampling, SweepConfig
from .sweep_store import SweepStore


@dataclass
class ShardInputs:
    """Everything that defines one shard's maps and their inference, derived from (seed, shard)."""

    shard: int
    map_index: np.ndarray  # (B,) global map indices
    hosts: HostBatch  # host parameters, scenario class ids and per-map scenario seeds
    noise_sigma: np.ndarray  # (B,)
    noise_seed: int
    dropout_seed: np.ndarray  # (B,) MC Dropout seed per map: a map's masks never depend on its shard-mates

    @property
    def scenario_label(self) -> np.ndarray:
        labels = np.array((SMOOTH, *SCENARIOS), dtype=object)
        return labels[self.hosts.scenario + 1]


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return 10 ** rng.uniform(math.log10(bounds[0]), math.log10(bounds[1]), n)


def _axis(bounds: tuple[float, float], points: int, log: bool) -> np.ndarray:
    """Grid points over [low, high]; a single point sits in the middle (geometric middle when log)."""
    low, high = bounds
    if points == 1:
        return np.array([math.sqrt(low * high) if log else 0.5 * (low + high)])
    return np.geomspace(low, high, points) if log else np.linspace(low, high, points)


def shard_inputs(config: SweepConfig, shard: int) -> ShardInputs:
    """The inputs of shard `shard`: random draws or grid points, with seeds from (config.seed, shard)."""
    span = config.shard_range(shard)
    index = np.arange(span.start, span.stop, dtype=np.int64)
    n = index.size
    rng = np.random.default_rng([config.seed, shard])
    scenario_codes = np.array([SCENARIO_CLASS.get(s, NO_SCENARIO) for s in config.scenarios])
    noise_levels = np.asarray(config.noise_levels, dtype=np.float64)
    box, sampling = config.box, config.sampling
    if isinstance(sampling, GridSampling):
        axes = (
            _axis(box.M_vir, sampling.M_vir_points, log=True),
            _axis(box.scale_radius, sampling.scale_radius_points, log=True),
            _axis(box.ellipticity, sampling.ellipticity_points, log=False),
        )
        shape = (*(a.size for a in axes), scenario_codes.size, noise_levels.size)
        m, r, e, s, k = np.unravel_index(index % math.prod(shape), shape)
        mass, radius, ellipticity = axes[0][m], axes[1][r], axes[2][e]
        scenario, noise = scenario_codes[s], noise_levels[k]
    else:
        mass = _log_uniform(rng, box.M_vir, n)
        radius = _log_uniform(rng, box.scale_radius, n)
        ellipticity = rng.uniform(*box.ellipticity, n)
        scenario = scenario_codes[rng.integers(0, scenario_codes.size, n)]
        noise = noise_levels[rng.integers(0, noise_levels.size, n)]
    angle = rng.uniform(0.0, 180.0, n)
    map_seed = rng.integers(0, 2**62, n)
    dropout_seed = rng.integers(0, 2**62, n)
    noise_seed = int(rng.integers(0, 2**62))
    hosts = HostBatch(mass, radius, ellipticity, angle, scenario, map_seed)
    return ShardInputs(shard, index, hosts, noise, noise_seed, dropout_seed)


def render_maps(config: SweepConfig, inputs: ShardInputs, device: torch.device) -> np.ndarray:
    """The shard's kappa maps (B, N, N) float32: hosts + scenario draws, plus per-map Gaussian noise."""
    geometry = lens_geometry(config.z_lens, config.z_source)
    maps = generate_batch(inputs.hosts, config.grid_size, config.fov_kpc, geometry, device=device).cpu().numpy()
    if inputs.noise_sigma.any():
        noise = np.random.default_rng(inputs.noise_seed).standard_normal(maps.shape, dtype=np.float32)
        maps += noise * inputs.noise_sigma[:, None, None].astype(np.float32)
    return maps


def shard_table(config: SweepConfig, inputs: ShardInputs, prediction: PredictionBatch) -> pa.Table:
    """One row per map: identity, true host parameters, predictions with uncertainties, class output.

    Prediction columns are `pred_` + the Predictor's names: M_vir, r_s, ellipticity, position_angle,
    concentration, and (mc_samples > 1) their *_std, *_p16, *_p84, *_p2_5, *_p97_5. `inside_training_domain`
    says whether the map and its estimates lie where the model was trained (`outside_training_domain`: the
    names of what does not, comma-separated).
    """
    hosts = inputs.hosts
    geometry = lens_geometry(config.z_lens, config.z_source)
    n = len(hosts)
    columns: dict[str, np.ndarray] = {
        "shard": np.full(n, inputs.shard, dtype=np.int32),
        "map_index": inputs.map_index,
        "map_seed": hosts.seed.astype(np.int64),
        "dropout_seed": inputs.dropout_seed.astype(np.int64),
        "scenario": inputs.scenario_label.astype(str),
        "noise_sigma": inputs.noise_sigma,
        "true_M_vir": hosts.M_vir,
        "true_r_s": hosts.scale_radius,
        "true_ellipticity": hosts.ellipticity,
        "true_position_angle": hosts.position_angle,
        "true_concentration": r200_from_mass(hosts.M_vir, geometry.rho_crit) / hosts.scale_radius,
    }
    for name, values in prediction.values.items():
        columns[f"pred_{name}"] = np.asarray(values, dtype=np.float64)
    for name, values in (prediction.uncertainties or {}).items():  # None for mc_samples = 1
        columns[f"pred_{name}"] = np.asarray(values, dtype=np.float64)
    probs = np.asarray(prediction.class_probs, dtype=np.float64)
    for i, label in enumerate(CLASS_NAMES):
        columns[f"prob_{label}"] = probs[:, i]
    columns["predicted_class"] = np.asarray(CLASS_NAMES)[probs.argmax(axis=1)]
    columns["noise_sigma_estimate"] = np.asarray(prediction.noise_sigma, dtype=np.float64)
    columns["entropy"] = np.asarray(prediction.entropy, dtype=np.float64)
    columns["mutual_information"] = np.asarray(prediction.mutual_information, dtype=np.float64)
    columns["inside_training_domain"] = np.array([not outside for outside in prediction.outside_training])
    columns["outside_training_domain"] = np.array([",".join(outside) for outside in prediction.outside_training],
                                                  dtype=str)
    return pa.table(columns)


def process_shard(predictor: Predictor, config: SweepConfig, store: SweepStore, shard: int) -> dict[str, float]:
    """Generate, infer and write one shard; returns seconds per stage."""
    start = time.perf_counter()
    inputs = shard_inputs(config, shard)
    maps = render_maps(config, inputs, predictor.device)
    generated = time.perf_counter()
    geometry = MapGeometry(config.fov_kpc, config.z_lens, config.z_source)
    prediction = predictor.predict_batch(maps, geometry, config.mc_samples, seed=inputs.dropout_seed.tolist(),
                                         symmetrize=config.symmetrize)
    inferred = time.perf_counter()
    table = shard_table(config, inputs, prediction)
    if any(np.isnan(column.to_numpy()).any() for column in table.columns if pa.types.is_floating(column.type)):
        raise FloatingPointError(f"shard {shard}: NaN in the predictions")
    store.write_shard(shard, table)
    return {"generate": generated - start, "infer": inferred - generated, "write": time.perf_counter() - inferred}
