"""Sweep config schema and shard inputs: validation messages, determinism, grid coverage (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.sweep_config import ConfigError, load_config, parse_config
from cluster.sweep_pipeline import render_maps, shard_inputs

REPO = Path(__file__).resolve().parent.parent
BASE = {"name": "t", "seed": 11, "sampling": {"method": "random", "n_maps": 25}, "shard_size": 10}


@pytest.mark.parametrize("name", ["small", "large"])
def test_example_configs_validate(name: str) -> None:
    config = load_config(REPO / "configs" / "sweeps" / f"{name}.yaml")
    assert config.n_shards == -(-config.n_maps // config.shard_size)


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"mc_samples": 0}, ["mc_samples", "greater than or equal to 1"]),
        ({"grid_size": 100}, ["grid_size", "32, 64 or 128"]),
        ({"scenarios": ["CDM", "XDM"]}, ["scenarios.1", "XDM"]),
        ({"noise_levels": [0.0, 0.0]}, ["noise_levels", "unique"]),
        ({"box": {"M_vir": [1e10, 1e12]}}, ["box.M_vir", "1e+11"]),
        ({"z_source": 0.3}, ["z_source (0.3) must be larger than z_lens"]),
        ({"execution": {"actors": [3, 1]}}, ["actors must be [min, max]"]),
        ({"shard_sise": 5}, ["shard_sise", "Extra inputs are not permitted"]),
        ({"sampling": {"method": "mesh"}}, ["sampling", "'mesh'"]),
    ],
)
def test_invalid_configs_name_the_field(change: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE | change, "bad.yaml")
    message = str(raised.value)
    assert message.startswith("invalid sweep config bad.yaml")
    for needle in needles:
        assert needle in message


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read sweep config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_data_hash_ignores_execution_only() -> None:
    config = parse_config(BASE)
    assert parse_config(BASE | {"execution": {"actors": 7}}).data_hash() == config.data_hash()
    assert parse_config(BASE | {"seed": 12}).data_hash() != config.data_hash()
    assert parse_config(BASE | {"symmetrize": False}).data_hash() == config.data_hash()  # older outputs resume
    assert parse_config(BASE | {"symmetrize": True}).data_hash() != config.data_hash()


def test_a_symmetrized_shard_holds_the_predictors_symmetrized_results(tmp_path: Path) -> None:
    """`symmetrize: true` runs every map of a shard through the eight views, as Predictor(symmetrize=True) does
    for the same maps and seeds."""
    from cluster.sweep_pipeline import process_shard
    from cluster.sweep_report import render_report, summarize
    from cluster.sweep_store import SweepStore
    from lensing.pinn.predictor import MapGeometry, Predictor

    config = parse_config(BASE | {"symmetrize": True, "mc_samples": 5, "noise_levels": [0.01]})
    predictor = Predictor.from_package(device="cpu")
    store = SweepStore.open(str(tmp_path))
    process_shard(predictor, config, store, 0)
    table = store.read_table().to_pandas().sort_values("map_index")
    inputs = shard_inputs(config, 0)
    maps = render_maps(config, inputs, predictor.device)
    geometry = MapGeometry(config.fov_kpc, config.z_lens, config.z_source)
    for symmetrize in (True, False):
        expected = predictor.predict_batch(maps, geometry, 5, seed=inputs.dropout_seed.tolist(), symmetrize=symmetrize)
        same = np.allclose(table["pred_M_vir"].to_numpy(), np.asarray(expected.values["M_vir"]), rtol=1e-6)
        assert same is symmetrize
    summary = summarize(store.read_table(), config, {"name": "pinn"}, [])
    assert summary["symmetrized"] is True and "symmetrized" in render_report(summary, config)


def test_shards_partition_the_maps() -> None:
    config = parse_config(BASE)
    indices = np.concatenate([shard_inputs(config, k).map_index for k in range(config.n_shards)])
    np.testing.assert_array_equal(indices, np.arange(25))
    with pytest.raises(IndexError):
        shard_inputs(config, config.n_shards)


def test_shard_inputs_are_a_function_of_seed_and_shard() -> None:
    config = parse_config(BASE | {"noise_levels": [0.0, 0.01]})
    first, again, other = shard_inputs(config, 1), shard_inputs(config, 1), shard_inputs(config, 2)
    for field in ("M_vir", "scale_radius", "ellipticity", "position_angle", "scenario", "seed"):
        np.testing.assert_array_equal(getattr(first.hosts, field), getattr(again.hosts, field))
    assert not np.array_equal(first.hosts.M_vir, other.hosts.M_vir)
    np.testing.assert_array_equal(render_maps(config, first, "cpu"), render_maps(config, again, "cpu"))
    box = config.box
    assert box.M_vir[0] <= first.hosts.M_vir.min() and first.hosts.M_vir.max() <= box.M_vir[1]
    assert set(first.noise_sigma) <= {0.0, 0.01}


def test_grid_sampling_covers_every_point_once_per_repeat() -> None:
    sampling = {"method": "grid", "M_vir_points": 3, "scale_radius_points": 2, "ellipticity_points": 2, "repeats": 2}
    config = parse_config(BASE | {"sampling": sampling, "scenarios": ["none", "SIDM"], "noise_levels": [0.0, 0.02]})
    assert config.n_maps == 3 * 2 * 2 * 2 * 2 * 2
    inputs = [shard_inputs(config, k) for k in range(config.n_shards)]
    points = [
        (m, r, e, s, n)
        for x in inputs
        for m, r, e, s, n in zip(x.hosts.M_vir, x.hosts.scale_radius, x.hosts.ellipticity, x.scenario_label,
                                 x.noise_sigma, strict=True)
    ]
    assert len(set(points)) == config.n_maps // 2
    np.testing.assert_allclose(sorted({p[0] for p in points}), [1e11, 10**12.5, 1e14])
    np.testing.assert_allclose(sorted({p[2] for p in points}), [0.0, 0.5])
    assert {p[3] for p in points} == {"none", "SIDM"}


def test_the_sweep_driver_starts_without_torch_or_astropy() -> None:
    """The driver validates the config and asks for the workers before they load torch; importing torch itself
    (2 s of a 2-core machine) or astropy's cosmology (1 s) would sit on the job's critical path. Only the
    worker actors import them."""
    probe = ("import sys, cluster.sweep, cluster.sweep_ray, cluster.sweep_report; "
             "cluster.sweep.load_config('configs/sweeps/small.yaml'); "
             "print([name for name in ('torch', 'astropy.cosmology') if name in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
