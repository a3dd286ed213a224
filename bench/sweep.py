"""Benchmark: a sweep as a Ray job against a single-process loop over the same Predictor.

    python bench/sweep.py [--maps 20000] [--large-maps 100000] [--cpus 2] [--shard-size 500]

Both sides do the same work for the same config (20,000 maps of 64 x 64, mc_samples = 20, every scenario,
three noise levels, the same seed, so the same maps and MC Dropout masks): generate, infer and write the
same Parquet shards with `cluster.sweep_pipeline.process_shard`, then the same summary, plots and report.

- Single process (the baseline): the loop a user would write, `python` running shard after shard in one
  process with torch's default threading (one intra-op thread per core). Timed from the process start
  (imports and model load included) to its exit. It is run a second time with one torch thread, as an
  extra figure and for a bit-for-bit comparison with the Ray job, whose workers use one thread each.
- Bare processes: `--cpus` one-thread loops started together without Ray, each on every `--cpus`-th
  shard (no report). Their pipeline is the most that that many one-thread workers make of this
  machine's cores, so it bounds the Ray job's pipeline speedup; the Ray job's pipeline over theirs is
  what Ray itself costs.
- Ray job: submitted with JobSubmissionClient to a private local head with `--cpus` CPUs that is already
  running (its start is not counted), and timed from `submit_job` (working-dir upload, job supervisor,
  driver start, `--cpus` one-thread worker actors starting and loading the model) to the job status
  SUCCEEDED (pipeline, summary, plots and report included).

Stage times (generate, infer, write) are summed over shards; in the Ray job that is over actors, so they
are CPU-seconds that can exceed its wall time. The load average before each run is printed: other work on
the machine skews the comparison, and the OpenMP threads of the default-threaded baseline suffer most.
Then the same two (default-threaded loop, Ray job) on `--large-maps` maps (100,000), end to end.
The last line is one JSON object: `pipeline_speedup_vs_single_process` (shards only; goal >= 1.4),
`speedup_vs_single_process` (end to end, 20,000 maps), `speedup_vs_single_process_100k` (end to end,
100,000 maps; goal >= 1.25), `bare_processes_pipeline_speedup_vs_single_process` (the ceiling above),
`ray_pipeline_over_bare_processes` and `job_fixed_cost_s` (the Ray job's wall time outside the pipeline: submit,
driver and actor start, report, exit; goal <= 8 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STAGES = ("generate", "infer", "write")
PIPELINE = "pipeline (generate, infer, write)"  # the phase both runs share


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


# --- the single-process loop (runs in a child process: `bench/sweep.py --single-process ...`) ------------

def single_process_main(config_path: str, output: str, threads: int, result_path: str, part: str = "0/1") -> None:
    """The loop a user would write: one process, shard after shard, then the report.

    `part` "i/n" runs only the shards k with k % n == i and writes no report: one of n such processes
    started together (`bare_processes`)."""
    started = time.time()
    import torch
    import yaml

    from cluster.sweep_config import parse_config
    from cluster.sweep_pipeline import process_shard
    from cluster.sweep_report import write_report
    from cluster.sweep_store import SweepStore
    from lensing.pinn.predictor import Predictor

    if threads:
        torch.set_num_threads(threads)
    config = parse_config(yaml.safe_load(Path(config_path).read_text()))
    predictor = Predictor.from_package(device="cpu")
    store = SweepStore.open(output)
    loaded = time.time()
    stages = dict.fromkeys(STAGES, 0.0)
    index, parts = (int(x) for x in part.split("/"))
    for shard in range(index, config.n_shards, parts):
        for stage, seconds in process_shard(predictor, config, store, shard).items():
            stages[stage] += seconds
        if parts == 1 and (shard % 10 == 9 or shard == config.n_shards - 1):
            done = config.shard_range(shard).stop
            print(f"  single process ({torch.get_num_threads()} thread(s)): {done}/{config.n_maps} maps, "
                  f"{done / (time.time() - loaded):.0f} maps/s", flush=True)
    pipeline_finished = time.time()
    if parts == 1:
        info = predictor.info()
        write_report(store, config, {key: info.get(key) for key in ("name", "version", "sha256")}, [])
    Path(result_path).write_text(json.dumps({
        "threads": torch.get_num_threads(), "stage_s": stages,
        "timeline": {"process_started": started, "model_loaded": loaded, "pipeline_finished": pipeline_finished,
                     "report_written": time.time()},
    }))


def single_process(config_path: Path, output: Path, threads: int | None, n_maps: int) -> dict:
    """Run the loop in a fresh `python` (threads None: torch's default) and time it from start to exit."""
    result_path = output.with_suffix(".json")
    load = os.getloadavg()[0]
    started = time.time()
    subprocess.run([sys.executable, __file__, "--single-process", str(config_path), str(output), str(threads or 0),
                    str(result_path)], check=True, cwd=REPO)
    finished = time.time()
    inner = json.loads(result_path.read_text())
    t = inner["timeline"]
    phases = {
        "start, imports, model load": t["model_loaded"] - started,
        PIPELINE: t["pipeline_finished"] - t["model_loaded"],
        "summary, plots, report": t["report_written"] - t["pipeline_finished"],
        "exit": finished - t["report_written"],
    }
    return run_figures(n_maps, finished - started, phases, load, threads=inner["threads"],
                       stage_s={k: round(v, 2) for k, v in inner["stage_s"].items()})


def bare_processes(config_path: Path, output: Path, n: int, n_maps: int) -> dict:
    """`n` one-thread loops started together without Ray, each on every n-th shard: the most that `n`
    workers can make of this machine's cores. Its pipeline runs from the first model loaded to the last
    shard written; the Ray job's pipeline over this one is what Ray itself costs."""
    load = os.getloadavg()[0]
    started = time.time()
    results = [output.with_name(f"{output.name}-{i}.json") for i in range(n)]
    children = [subprocess.Popen([sys.executable, __file__, "--single-process", str(config_path),
                                  str(output.with_name(f"{output.name}-{i}")), "1", str(results[i]), f"{i}/{n}"],
                                 cwd=REPO) for i in range(n)]
    if any([child.wait() for child in children]):  # wait for every child, even after one failed
        raise RuntimeError("a bare worker process failed")
    finished = time.time()
    inner = [json.loads(path.read_text()) for path in results]
    loaded = min(r["timeline"]["model_loaded"] for r in inner)
    pipeline_finished = max(r["timeline"]["pipeline_finished"] for r in inner)
    phases = {"start, imports, model load": loaded - started, PIPELINE: pipeline_finished - loaded,
              "exit (no report)": finished - pipeline_finished}
    return run_figures(n_maps, finished - started, phases, load, actors=n, threads=1,
                       stage_s={k: round(sum(r["stage_s"][k] for r in inner), 2) for k in STAGES})


def run_figures(n_maps: int, wall: float, phases: dict, load: float, **extra) -> dict:
    """One run's figures: end-to-end and pipeline-only maps/s, where the wall time went, the load before."""
    return {"wall_s": round(wall, 2), "maps_per_s": round(n_maps / wall, 1),
            "pipeline_maps_per_s": round(n_maps / phases[PIPELINE], 1), **extra,
            "phases_s": {k: round(v, 2) for k, v in phases.items()}, "load_average_before": round(load, 2)}


# --- the Ray job --------------------------------------------------------------------------------------

def ray_job(config_path: Path, output: Path, cpus: int, n_maps: int) -> dict:
    """Submit the sweep to a running private head with `cpus` CPUs and time it to SUCCEEDED."""
    from ray.job_submission import JobSubmissionClient

    from harness.ray_head import local_ray_cluster

    with local_ray_cluster(num_cpus=cpus) as cluster:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        client = JobSubmissionClient(cluster.dashboard_url)
        time.sleep(5.0)  # let the fresh head finish starting up: the job goes to a running cluster
        load = os.getloadavg()[0]
        for attempt in range(60):  # a head still starting its job agent answers 500 "No available agent"
            started = time.time()
            try:
                job = client.submit_job(
                    entrypoint=f"python -m cluster.sweep {config_path} --output {output}",
                    runtime_env={"working_dir": str(REPO)},  # what `--working-dir .` ships (.gitignore applies)
                )
                break
            except RuntimeError as error:
                if "No available agent" not in str(error) or attempt == 59:
                    raise
                time.sleep(1.0)
        printed, last_logs = 0, started
        while not (status := client.get_job_status(job)).is_terminal():
            time.sleep(0.1)
            if time.time() - last_logs > 5.0:  # progress lines, without polling the dashboard too hard
                lines = client.get_job_logs(job).splitlines()
                for line in lines[printed:]:
                    if line.startswith("[sweep]"):
                        print(f"  ray job: {line}", flush=True)
                printed, last_logs = len(lines), time.time()
        finished = time.time()
        logs = client.get_job_logs(job)
    for line in logs.splitlines()[printed:]:
        if line.startswith("[sweep]"):
            print(f"  ray job: {line}", flush=True)
    if status.value != "SUCCEEDED":
        raise RuntimeError(f"sweep job ended {status.value}:\n{logs[-4000:]}")
    result = json.loads(logs.strip().splitlines()[-1])
    t = result["timeline"]
    phases = {
        "submit: upload, job supervisor, driver start": t["driver_started"] - started,
        "driver imports, config, ray.init, actors asked": t["workers_requested"] - t["driver_started"],
        "actors start, import, load model": t["first_worker_ready"] - t["workers_requested"],
        PIPELINE: t["pipeline_finished"] - t["first_worker_ready"],
        "summary, plots, report": t["report_written"] - t["pipeline_finished"],
        "driver exit, job status": finished - t["report_written"],
    }
    return run_figures(n_maps, finished - started, phases, load, actors=cpus, threads_per_actor=1,
                       stage_s=result["stage_s"])


# --- comparison and report ----------------------------------------------------------------------------

def max_relative_difference(first: Path, second: Path) -> float:
    """Largest relative difference over the float columns of two sweep outputs of the same config."""
    import numpy as np

    from cluster.sweep_store import SweepStore

    a, b = SweepStore.open(str(first)).read_table(), SweepStore.open(str(second)).read_table()
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    worst = 0.0
    for name in a.column_names:
        if a.column(name).type == "double":
            x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12))))
    return worst


def print_table(runs: dict[str, dict]) -> None:
    names = list(runs)
    width = 44
    print("\n" + " " * width + "".join(f"{name:>22}" for name in names))
    rows = [("threads", lambda r: f"{r.get('actors', 1)} x {r.get('threads', r.get('threads_per_actor'))}"),
            ("load average before", lambda r: f"{r['load_average_before']:.2f}"),
            ("end to end, s", lambda r: f"{r['wall_s']:.1f}"),
            ("end to end, maps/s", lambda r: f"{r['maps_per_s']:.0f}"),
            ("pipeline only, maps/s", lambda r: f"{r['pipeline_maps_per_s']:.0f}")]
    rows += [(f"stage {stage}, s (summed over workers)", lambda r, s=stage: f"{r['stage_s'][s]:.1f}")
             for stage in STAGES]
    for label, cell in rows:
        print(f"{label:<{width}}" + "".join(f"{cell(runs[name]):>22}" for name in names))
    for name in names:
        print(f"\n{name}, where the wall time goes:")
        for phase, seconds in runs[name]["phases_s"].items():
            print(f"  {phase:<{width}}{seconds:8.2f} s")
    print(flush=True)


def fixed_cost(run: dict) -> float:
    """Seconds of a run that are not the pipeline: start-up, report, exit."""
    return round(run["wall_s"] - run["phases_s"][PIPELINE], 2)


def main() -> None:
    if len(sys.argv) in (6, 7) and sys.argv[1] == "--single-process":
        single_process_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=20_000)
    parser.add_argument("--large-maps", type=int, default=100_000, help="maps of the end-to-end run (0: skip it)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head = number of one-thread actors")
    parser.add_argument("--shard-size", type=int, default=500)
    args = parser.parse_args()
    import yaml

    from cluster.sweep_config import parse_config

    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        raw = bench_config(args.maps, args.cpus, args.shard_size)
        config = parse_config(raw)
        config_path = workdir / "bench.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        print(f"sweep bench: {config.n_maps} maps of {config.grid_size}x{config.grid_size}, mc_samples "
              f"{config.mc_samples}, {config.n_shards} shards of {config.shard_size}, {os.cpu_count()} CPUs here, "
              f"Ray head with {args.cpus}", flush=True)
        default = single_process(config_path, workdir / "single-default", None, config.n_maps)
        one = single_process(config_path, workdir / "single-1", 1, config.n_maps)
        bare = bare_processes(config_path, workdir / "bare", args.cpus, config.n_maps)
        ray = ray_job(config_path, workdir / "ray", args.cpus, config.n_maps)
        runs = {f"single, {default['threads']} threads": default, "single, 1 thread": one,
                f"{args.cpus} bare processes": bare, f"Ray job, {args.cpus} actors": ray}
        large: dict = {}
        if args.large_maps:
            raw_large = bench_config(args.large_maps, args.cpus, args.shard_size) | {"name": "bench-large"}
            large_path = workdir / "large.yaml"
            large_path.write_text(yaml.safe_dump(raw_large))
            print(f"end to end: {args.large_maps} maps", flush=True)
            large["single"] = single_process(large_path, workdir / "large-single", None, args.large_maps)
            large["ray"] = ray_job(large_path, workdir / "large-ray", args.cpus, args.large_maps)
            runs |= {f"single, {args.large_maps} maps": large["single"],
                     f"Ray job, {args.large_maps} maps": large["ray"]}
        print_table(runs)
        same = max_relative_difference(workdir / "single-1", workdir / "ray")
        other = max_relative_difference(workdir / "single-default", workdir / "ray")
        print(f"largest relative difference of the Ray job's table: {same:.1e} against the 1-thread loop "
              f"(same threads), {other:.1e} against the default-threaded loop", flush=True)
        speedup = ray["maps_per_s"] / default["maps_per_s"]
        pipeline = ray["pipeline_maps_per_s"] / default["pipeline_maps_per_s"]
        ceiling = bare["pipeline_maps_per_s"] / default["pipeline_maps_per_s"]
        print(f"speedup of the Ray job: {speedup:.2f}x against the default-threaded single process (the baseline), "
              f"{ray['maps_per_s'] / one['maps_per_s']:.2f}x against one thread; pipeline only: {pipeline:.2f}x; "
              f"the job's fixed cost (start-up, report, exit): {fixed_cost(ray):.1f} s", flush=True)
        print(f"{args.cpus} bare one-thread processes (no Ray) reach {ceiling:.2f}x the single process's pipeline: "
              f"what {args.cpus} one-thread workers can reach here; the Ray job's pipeline is "
              f"{ray['pipeline_maps_per_s'] / bare['pipeline_maps_per_s']:.2f} of it", flush=True)
        figures = {
            "maps": config.n_maps, "grid_size": config.grid_size, "mc_samples": config.mc_samples,
            "shard_size": config.shard_size, "cpus": args.cpus,
            "single_process": default, "single_process_1_thread": one, "ray_job": ray,
            "speedup_vs_single_process_1_thread": round(ray["maps_per_s"] / one["maps_per_s"], 3),
            "max_relative_difference_vs_1_thread": same,
            "max_relative_difference_vs_default_threads": other,
            "speedup_vs_single_process": round(speedup, 3),
            "pipeline_speedup_vs_single_process": round(pipeline, 3),
            "bare_processes_pipeline_speedup_vs_single_process": round(ceiling, 3),
            "ray_pipeline_over_bare_processes": round(ray["pipeline_maps_per_s"] / bare["pipeline_maps_per_s"], 3),
            "job_fixed_cost_s": fixed_cost(ray),
        }
        if large:
            figures["speedup_vs_single_process_100k"] = round(large["ray"]["maps_per_s"]
                                                             / large["single"]["maps_per_s"], 3)
            figures["large_maps"] = args.large_maps
            figures["job_fixed_cost_s_100k"] = fixed_cost(large["ray"])
        print(json.dumps(figures), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
