"""Sweeps as Ray jobs against a real local Ray head, submitted through JobSubmissionClient.

One private head (2 CPUs) serves the module. The reference sweep is small (500 maps of 64 x 64 in 10
shards of 50, mc_samples = 4): shards take long enough to stop a job between them, and the module
still fits a 2-core machine in a few minutes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from harness.ray_head import LocalRayCluster, local_ray_cluster

pytestmark = pytest.mark.slow  # starts a Ray cluster

REPO = Path(__file__).resolve().parent.parent
EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", "out", "runs", "build", "dist",
            "**/*.pt", "**/*.ckpt"]
JOB_TIMEOUT = 300.0
SWEEP = {
    "name": "test-sweep",
    "seed": 5,
    "sampling": {"method": "random", "n_maps": 500},
    "scenarios": ["none", "CDM", "WDM", "SIDM"],
    "noise_levels": [0.0, 0.01],
    "grid_size": 64,
    "mc_samples": 4,
    "shard_size": 50,
    "execution": {"actors": 2, "torch_threads": 1, "max_attempts": 2},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with local_ray_cluster(num_cpus=2) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: LocalRayCluster, monkeypatch_module):
    from ray.job_submission import JobSubmissionClient

    monkeypatch_module.setenv("RAY_AUTH_MODE", "disabled")
    return JobSubmissionClient(cluster.dashboard_url)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def write_config(folder: Path, name: str, **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(SWEEP | changes))
    return path


def submit(client, config: Path, output: Path, pause_file: Path | None = None) -> str:
    pause = f" --pause-file {pause_file}" if pause_file else ""
    for attempt in range(60):  # a head still starting its job agent answers 500 "No available agent"
        try:
            return client.submit_job(
                entrypoint=f"python -m cluster.sweep {config} --output {output}{pause}",
                runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
            )
        except RuntimeError as error:
            if "No available agent" not in str(error) or attempt == 59:
                raise
            time.sleep(1.0)


def wait(client, job_id: str, timeout: float = JOB_TIMEOUT) -> str:

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status.value
        time.sleep(0.5)
    client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s:\n{client.get_job_logs(job_id)[-3000:]}")


def shard_files(output: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (output / "shards").glob("shard-*.parquet") if p.is_file()}


def settled_shard_files(output: Path, quiet: float = 3.0) -> dict[str, float]:
    """Shard files once none has appeared for `quiet` seconds (a stopped job's actors die shortly after it)."""
    files, since = shard_files(output), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.2)
        if (now := shard_files(output)) != files:
            files, since = now, time.monotonic()
    return files


def read_table(output: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(output / "shards" / name) for name in sorted(shard_files(output))]).sort_by(
        "map_index")


@pytest.fixture(scope="module")
def reference(client, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted run of SWEEP: its output folder and job logs."""
    folder = tmp_path_factory.mktemp("reference")
    job = submit(client, write_config(folder, "sweep"), folder / "out")
    status = wait(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    return folder / "out", logs


def test_small_sweep_succeeds_with_complete_consistent_outputs(reference: tuple[Path, str]) -> None:
    output, logs = reference
    table = read_table(output)
    assert len(shard_files(output)) == 10 and table.num_rows == 500
    np.testing.assert_array_equal(table.column("map_index").to_numpy(), np.arange(500))
    for name in table.column_names:
        column = table.column(name)
        assert column.null_count == 0, name
        if pa.types.is_floating(column.type):
            assert np.isfinite(column.to_numpy()).all(), name
    for prefix in ("true_", "pred_"):
        for parameter in ("M_vir", "r_s", "ellipticity"):
            assert f"{prefix}{parameter}" in table.column_names
    for column in ("pred_M_vir_std", "pred_M_vir_p16", "pred_M_vir_p84", "prob_CDM", "prob_WDM", "prob_SIDM",
                   "prob_none", "entropy", "predicted_class", "scenario", "noise_sigma", "noise_sigma_estimate"):
        assert column in table.column_names
    probs = np.stack([table.column(f"prob_{c}").to_numpy() for c in ("CDM", "WDM", "SIDM", "none")], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    summary = json.loads((output / "summary.json").read_text())
    assert summary["complete"] and summary["failed_shards"] == []
    assert summary["n_maps"] == summary["n_maps_planned"] == 500 and summary["n_shards_done"] == 10
    columns = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    error = np.log10(columns["pred_M_vir"] / columns["true_M_vir"])
    overall = summary["overall"]
    assert overall["n"] == 500
    assert overall["M_vir"]["median_abs_error"] == pytest.approx(np.median(np.abs(error)))
    inside = (columns["pred_r_s_p16"] <= columns["true_r_s"]) & (columns["true_r_s"] <= columns["pred_r_s_p84"])
    assert overall["r_s"]["coverage_68"] == pytest.approx(inside.mean())
    labelled = columns["scenario"] != "none"
    accuracy = (columns["predicted_class"][labelled] == columns["scenario"][labelled]).mean()
    assert overall["classification_accuracy"] == pytest.approx(accuracy)
    for key in ("M_vir", "r_s", "ellipticity", "scenario", "noise_sigma"):
        assert sum(b["n"] for b in summary["binned"][key]) == 500, key
    assert sum(map(sum, summary["confusion_matrix"]["counts"])) == 500
    for name in ("errors.png", "coverage.png", "confusion.png"):
        assert (output / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "# Sweep `test-sweep`" in (output / "report.md").read_text()
    assert "0 already done, 10 to run" in logs and "10/10 shards" in logs
    assert not math.isnan(json.loads(logs.strip().splitlines()[-1])["pipeline_s"])


def test_stopped_job_resumes_to_the_same_table(client, reference: tuple[Path, str], tmp_path: Path) -> None:
    # One actor makes the run long enough to stop midway; execution settings do not change the table.
    config = write_config(tmp_path, "sweep", execution={"actors": 1, "torch_threads": 1, "max_attempts": 2})
    output, pause = tmp_path / "out", tmp_path / "pause"
    job = submit(client, config, output, pause_file=pause)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not shard_files(output) and time.monotonic() < deadline:
        time.sleep(0.05)
    pause.touch()  # the event: no new shard starts after the first is written, however fast this machine is
    client.stop_job(job)
    assert wait(client, job) == "STOPPED"
    before = settled_shard_files(output)
    assert 1 <= len(before) < 10, f"stopped with {len(before)} shards"

    job = submit(client, config, output)
    status = wait(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"{len(before)} already done, {10 - len(before)} to run" in logs
    after = shard_files(output)
    assert len(after) == 10 and all(after[name] == mtime for name, mtime in before.items())
    assert read_table(output).equals(read_table(reference[0]))
    assert json.loads((output / "summary.json").read_text())["overall"] == json.loads(
        (reference[0] / "summary.json").read_text())["overall"]


def test_failing_shard_is_retried_reported_and_the_others_kept(client, reference, tmp_path: Path) -> None:
    config = write_config(tmp_path, "sweep")
    output = tmp_path / "out"
    blocker = output / "shards" / "shard-00003.parquet"
    blocker.mkdir(parents=True)  # a directory under shard 3's name: its write fails on every attempt
    job = submit(client, config, output)
    status = wait(client, job)
    logs = client.get_job_logs(job)
    assert status == "FAILED", logs[-4000:]
    assert "shard 3 FAILED after 2 attempts" in logs
    assert "rerun the same command to retry only those" in logs
    summary = json.loads((output / "summary.json").read_text())
    assert not summary["complete"] and [f["shard"] for f in summary["failed_shards"]] == [3]
    assert summary["n_maps"] == 450 and len(shard_files(output)) == 9

    blocker.rmdir()
    job = submit(client, config, output)
    assert wait(client, job) == "SUCCEEDED", client.get_job_logs(job)[-4000:]
    assert "9 already done, 1 to run" in client.get_job_logs(job)
    assert read_table(output).equals(read_table(reference[0]))


def test_invalid_config_fails_with_a_clear_message(client, tmp_path: Path) -> None:
    config = write_config(tmp_path, "bad", mc_samples=0, grid_size=100)
    job = submit(client, config, tmp_path / "out")
    assert wait(client, job) == "FAILED"
    logs = client.get_job_logs(job)
    assert f"invalid sweep config {config}" in logs
    assert "mc_samples: Input should be greater than or equal to 1 (got 0)" in logs
    assert "grid_size: Input should be 32, 64 or 128 (got 100)" in logs
    assert "Traceback" not in logs
