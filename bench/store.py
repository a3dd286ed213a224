"""Job store benchmark: the PostgreSQL backend against the embedded SQLite one, side by side, one machine.

Part 1, the store alone (JobDatabase, no Ray), each backend on this machine's disk (PostgreSQL from
harness/postgres.py with fsync on, its durable default; SQLite in WAL mode with synchronous=NORMAL):
  create_job      record_jobs of one finished job, one call at a time
  lease_complete  start_item + finish_item of one batch item (after create_batch, claim, pending_items)
  stats           stats() over the rows written above
  each as operations per second from 1 thread, and from 4 threads (4 JobStore replicas' worth of callers;
  SQLite serialises them on its one connection).
Part 2, through the service: serve_config.yaml deployed twice side by side on one private Ray head, one
application on SQLite (/sqlite) and one on PostgreSQL (/postgresql), one JobStore replica each, so only
the backend differs, and whatever else the shared machine runs weighs on both alike: the p50 of single-map
/api/v1/inference requests (64 x 64 npy, mc_samples 10, one at a time, alternating between the two; each
records its job before it answers), then the time to complete one batch of `--items` 16 x 16 maps
(mc_samples 1) on each, in the order SQLite, PostgreSQL, PostgreSQL, SQLite (`--rounds` 2), the other idle.
Goals: PostgreSQL adds at most 2 ms to the inference p50; the batch completes at least as fast on it.
The last line of output is one JSON object:
  ops_per_s                  {backend: {operation: {threads: ops/s}}}
  inference_p50_ms           {backend: p50}; inference_p50_added_ms   postgresql - sqlite
  batch_s                    {backend: mean seconds}; batch_postgres_over_sqlite   their ratio (<= 1: goal)
  load_1m                    the machine's 1-minute load average before and after the run
Run from the repository root: python bench/store.py [--items 10000] [--requests 300]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from deployments.batch_items import BatchItem, BatchOptions
from deployments.store import JobDatabase
from harness.postgres import postgres_server
from harness.ray_head import free_port, local_ray_cluster
from harness.serve import REPO, healthy, load_yaml, serve_deploy, wait_until
from lensing.synthetic import MapRequest, generate_map

OPTIONS = BatchOptions(mc_samples=1, refine=False, base_seed=0)
THREADS = (1, 4)


def timed(calls: list, threads: int) -> float:
    """Operations per second of running every callable in `calls` on `threads` threads."""
    started = time.perf_counter()
    if threads == 1:
        for call in calls:
            call()
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda call: call(), calls))
    return len(calls) / (time.perf_counter() - started)


def store_ops(url: str, n: int) -> dict:
    """{operation: {threads: ops/s}} of one backend."""
    results: dict[str, dict[str, float]] = {}
    local = threading.local()

    def db() -> JobDatabase:  # one store per thread: separate connections, as separate replicas have
        if not hasattr(local, "db"):
            local.db = JobDatabase(url)
        return local.db

    for threads in THREADS:
        jobs = [lambda: db().record_jobs([(uuid.uuid4().hex, "inference", {"seed": 1, "map_shape": [64, 64]},
                                           {"M_vir": {"mean": 1e12}, "class_probabilities": [0.5, 0.3, 0.2]})])
                for _ in range(n)]
        results.setdefault("create_job", {})[str(threads)] = round(timed(jobs, threads), 1)
        batch_id = uuid.uuid4().hex
        items = [BatchItem(job_id=uuid.uuid4().hex, index=k, source="map", seed=k, geometry={"fov_kpc": 1000.0},
                           map_shape=(16, 16), input=bytes(2176)) for k in range(n)]
        owner = JobDatabase(url)
        owner.create_batch(batch_id, items, OPTIONS, owner="bench", ttl=600)
        owner.pending_items(batch_id)

        def lease_complete(job_id: str) -> None:
            db().start_item(job_id)
            db().finish_item(job_id, result={"seed": 1, "M_vir": {"mean": 1e12}})

        calls = [lambda job_id=item.job_id: lease_complete(job_id) for item in items]
        results.setdefault("lease_complete", {})[str(threads)] = round(timed(calls, threads), 1)
        owner.finalize_batch(batch_id)
        results.setdefault("stats", {})[str(threads)] = round(timed([lambda: db().stats()] * (n // 10), threads), 1)
    return results


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def inference_latencies(bases: dict[str, str], requests_n: int) -> dict[str, dict]:
    """p50/p90 (ms) of single /inference requests, one at a time, alternating between the applications."""
    kappa = npy(generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence)
    latencies: dict[str, list[float]] = {name: [] for name in bases}
    with requests.Session() as session:
        for k in range(requests_n + 20):
            for name, base in bases.items():
                started = time.perf_counter()
                response = session.post(f"{base}/api/v1/inference?mc_samples=10&seed={k}", data=kappa,
                                        headers={"Content-Type": "application/x-npy"}, timeout=60)
                response.raise_for_status()
                if k >= 20:  # warm-up first
                    latencies[name].append(1e3 * (time.perf_counter() - started))
    return {name: {"p50_ms": round(statistics.median(values), 2), "p90_ms": round(float(np.percentile(values, 90)), 2)}
            for name, values in latencies.items()}


def batch_seconds(base: str, items: int) -> float:
    """Seconds from submitting one batch of `items` maps to its completion."""
    rng = np.random.default_rng(3)
    maps = [{"convergence_map": np.round(0.05 + 0.01 * rng.random((16, 16)), 2).tolist()} for _ in range(items)]
    started = time.perf_counter()
    response = requests.post(f"{base}/api/v1/batch", json={"maps": maps, "mc_samples": 1, "seed": 1}, timeout=300)
    assert response.status_code == 202, response.text
    status_url = base + response.json()["status_url"]
    wait_until(lambda: requests.get(status_url, timeout=120).json()["status"] in ("completed", "failed"), 3600,
               "the batch did not finish", interval=2.0)
    took = time.perf_counter() - started
    status = requests.get(status_url, timeout=120).json()
    assert status["completed"] == items, (status["status"], status["completed"], status["failed"])
    return round(took, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=2000, help="operations per store measurement")
    parser.add_argument("--requests", type=int, default=300, help="measured /inference requests per backend")
    parser.add_argument("--items", type=int, default=10000, help="maps in each timed batch")
    parser.add_argument("--rounds", type=int, default=2, help="batches per backend (ABBA order)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    started = time.time()
    summary: dict = {"ops_per_s": {}, "service": {}}
    with postgres_server() as postgres, tempfile.TemporaryDirectory(prefix="lsbench-") as workdir:
        backends = {"sqlite": f"sqlite:///{workdir}/ops.sqlite", "postgresql": postgres.url}
        for name, url in backends.items():
            summary["ops_per_s"][name] = store_ops(url, args.ops)
            for op, by_threads in summary["ops_per_s"][name].items():
                print(f"{name:10s} {op:15s} " + "  ".join(f"{t} thread(s) {v:9.1f}/s" for t, v in by_threads.items()),
                      flush=True)

        port = free_port()
        with local_ray_cluster(num_cpus=4, extra_env={"PYTHONPATH": str(REPO)}) as cluster:
            config = load_yaml(REPO / "serve_config.yaml")
            config["http_options"]["port"] = port
            [template] = config["applications"]
            config["applications"] = []
            for name in backends:
                application = copy.deepcopy(template)
                application.update(name=f"lensing-{name}", route_prefix=f"/{name}")
                args_ = application["args"]
                args_.update(max_body_bytes=64 * 1024 * 1024, batch={"max_items": args.items, "concurrency": 32})
                if name == "sqlite":
                    args_["store_url"] = f"sqlite:///{workdir}/service.sqlite"
                else:
                    application["runtime_env"] = {"env_vars": {"LENSING_STORE_URL": postgres.url}}
                    args_["store_url_env"] = "LENSING_STORE_URL"
                config["applications"].append(application)
            serve_deploy(cluster, config, Path(workdir) / "serve.yaml")
            bases = {name: f"http://127.0.0.1:{port}/{name}" for name in backends}
            for base in bases.values():
                wait_until(lambda base=base: healthy(base), 600, "an application did not become healthy")
            summary["service"] = inference_latencies(bases, args.requests)
            for name, result in summary["service"].items():
                print(f"{name:10s} inference p50 {result['p50_ms']:.2f} ms (p90 {result['p90_ms']:.2f})", flush=True)
            order = (["sqlite", "postgresql", "postgresql", "sqlite"] * args.rounds)[: 2 * args.rounds]
            for name in order:
                took = batch_seconds(bases[name], args.items)
                summary["service"][name].setdefault("batch_s", []).append(took)
                print(f"{name:10s} {args.items}-item batch {took:.1f} s", flush=True)
    service = summary["service"]
    print(json.dumps(summary | {"seconds": round(time.time() - started, 1)}))
    print(json.dumps({
        "ops_per_s": summary["ops_per_s"],
        "inference_p50_ms": {name: r["p50_ms"] for name, r in service.items()},
        "inference_p50_added_ms": round(service["postgresql"]["p50_ms"] - service["sqlite"]["p50_ms"], 2),
        "batch_s": {name: round(statistics.mean(r["batch_s"]), 1) for name, r in service.items()},
        "batch_items": args.items,
        "batch_postgres_over_sqlite": round(statistics.mean(service["postgresql"]["batch_s"])
                                            / statistics.mean(service["sqlite"]["batch_s"]), 2),
        "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
