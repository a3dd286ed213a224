"""Benchmark: a sweep as a Ray job against a single-process loop over the same Predictor.

    python bench/sweep.py [--maps 20000] [--cpus 2]

Both sides do the same work for the same config (maps of 64 x 64, mc_samples = 20, every scenario, three
noise levels): generate, infer, write the same Parquet shards, then the same summary, plots and report.
Both get the same thread budget, `--cpus`: the Ray job runs on a private head with that many CPUs, as
that many one-thread actors; the single process runs once with 1 torch thread and once with `--cpus`,
and the faster of the two is the baseline (on a busy machine intra-op threads can lose to one thread).
The Ray time runs from submission to SUCCEEDED (runtime-env setup, actor start and model loads
included); the head's own start is not counted. Stage times are summed over shards (in the Ray job over
actors, so they can exceed its wall time). The load average before each run is recorded: other work on
the machine skews the comparison. The last line is one JSON object with `speedup_vs_single_process`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # the repo root instead of bench/, whose modules must not shadow standard ones

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from cluster.sweep_config import SweepConfig, parse_config  # noqa: E402
from cluster.sweep_pipeline import STAGES, process_shard  # noqa: E402
from cluster.sweep_report import write_report  # noqa: E402
from cluster.sweep_store import SweepStore  # noqa: E402
from lensing.predictor import Predictor  # noqa: E402
from tests.ray_cluster import local_ray_cluster  # noqa: E402

EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info", "out", "runs", "build", "dist"]


def bench_config(maps: int, cpus: int, shard_size: int) -> dict:
    return {
        "name": "bench",
        "seed": 2026,
        "sampling": {"method": "random", "n_maps": maps},
        "scenarios": ["none", "CDM", "WDM", "SIDM"],
        "noise_levels": [0.0, 0.005, 0.02],
        "grid_size": 64,
        "mc_samples": 20,
        "shard_size": shard_size,
        "execution": {"actors": cpus, "cpus_per_actor": 1, "torch_threads": 1, "max_attempts": 1},
    }


def single_process(config: SweepConfig, output: Path, threads: int) -> dict:
    """The loop a user would write: one process, `threads` torch threads, shard after shard."""
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    predictor = Predictor.from_package(device="cpu")
    store = SweepStore.open(str(output))
    stages = dict.fromkeys(STAGES, 0.0)
    for shard in range(config.n_shards):
        for stage, seconds in process_shard(predictor, config, store, shard).items():
            stages[stage] += seconds
        if shard % 5 == 4 or shard == config.n_shards - 1:
            done = len(config.shard_range(shard)) + shard * config.shard_size
            print(f"  single process: {done}/{config.n_maps} maps, {done / (time.perf_counter() - started):.1f} maps/s",
                  flush=True)
    pipeline = time.perf_counter() - started
    info = predictor.info()
    write_report(store, config, {key: info.get(key) for key in ("name", "version", "sha256")}, [])
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "pipeline_s": round(pipeline, 2), "maps_per_s": round(config.n_maps / wall, 2),
            "threads": threads, "stage_s": {k: round(v, 2) for k, v in stages.items()},
            "load_average_before": round(load, 2)}


def ray_job(config_path: Path, config: SweepConfig, output: Path, cpus: int) -> dict:
    """Submit the sweep to a private head with `cpus` CPUs and time it to SUCCEEDED."""
    from ray.job_submission import JobSubmissionClient

    with local_ray_cluster(num_cpus=cpus) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        client = JobSubmissionClient(cluster.dashboard_url)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        job = client.submit_job(
            entrypoint=f"python -m cluster.sweep {config_path} --output {output}",
            runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES},
        )
        printed = 0
        while not (status := client.get_job_status(job)).is_terminal():
            time.sleep(1.0)
            lines = client.get_job_logs(job).splitlines()
            for line in lines[printed:]:
                if line.startswith("[sweep]"):
                    print(f"  ray job: {line}", flush=True)
            printed = len(lines)
        wall = time.perf_counter() - started
        logs = client.get_job_logs(job)
    if status.value != "SUCCEEDED":
        raise RuntimeError(f"sweep job ended {status.value}:\n{logs[-4000:]}")
    finished = json.loads(logs.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "pipeline_s": finished["pipeline_s"], "maps_per_s": round(config.n_maps / wall, 2),
            "actors": cpus, "threads_per_actor": 1, "stage_s": finished["stage_s"], "load_average_before": round(load, 2)}


def max_relative_difference(first: Path, second: Path) -> float:
    """Largest relative difference over the float columns of two sweep outputs of the same config."""
    a, b = SweepStore.open(str(first)).read_table(), SweepStore.open(str(second)).read_table()
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    worst = 0.0
    for name in a.column_names:
        if a.column(name).type == "double":
            x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))))
    return worst


def describe(name: str, result: dict) -> None:
    stages = result["stage_s"]
    total = sum(stages.values()) or 1.0
    split = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in stages.items())
    print(f"{name}: {result['maps_per_s']:.1f} maps/s end to end ({result['wall_s']:.1f}s); stages: {split}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=20_000)
    parser.add_argument("--cpus", type=int, default=2, help="thread budget for both sides")
    parser.add_argument("--shard-size", type=int, default=250)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        raw = bench_config(args.maps, args.cpus, args.shard_size)
        config = parse_config(raw)
        config_path = workdir / "bench.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        print(f"sweep bench: {config.n_maps} maps of {config.grid_size}x{config.grid_size}, mc_samples "
              f"{config.mc_samples}, {config.n_shards} shards, thread budget {args.cpus}", flush=True)
        singles = {}
        for threads in sorted({args.cpus, 1}, reverse=True):
            singles[threads] = single_process(config, workdir / f"single-{threads}", threads)
            describe(f"single process, {threads} thread(s)", singles[threads])
        ray = ray_job(config_path, config, workdir / "ray", args.cpus)
        describe("ray job", ray)
        best = max(singles, key=lambda t: singles[t]["maps_per_s"])
        difference = max_relative_difference(workdir / "single-1", workdir / "ray")
        print(f"largest relative difference, 1-thread single process vs Ray job: {difference:.2e}", flush=True)
        print(json.dumps({
            "maps": config.n_maps, "grid_size": config.grid_size, "mc_samples": config.mc_samples,
            "shard_size": config.shard_size, "cpus": args.cpus,
            "single_process": {f"{t}_threads": r for t, r in singles.items()}, "ray_job": ray,
            "baseline_threads": best,
            "speedup_by_single_process_threads": {
                f"{t}_threads": round(ray["maps_per_s"] / r["maps_per_s"], 3) for t, r in singles.items()},
            "max_relative_difference_same_threads": difference,
            "speedup_vs_single_process": round(ray["maps_per_s"] / singles[best]["maps_per_s"], 3),
        }), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
