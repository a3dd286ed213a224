"""Soak test: 20,000 requests at concurrency 64 over a mix of endpoints, against serve_config.yaml with API
keys on, on a private Ray head; watches every replica's memory while it runs.

Mix (weights): inference npy 64 x 64 mc_samples=10 (30), inference JSON 32 x 32 (10), synthetic npy
(20), synthetic JSON with CDM substructure (10), GET stats (8), GET job (10), GET health (4),
GET models (4), POST batch of 2 items (2), GET batch status (2).

Memory: the RSS of each Serve replica process (pid from ray.util.state, VmRSS from /proc) is sampled
every second; `rss_growth` compares each replica's mean RSS in the second quarter of the requests with
the last quarter, and reports the largest growth (a fraction; the first quarter is warm-up). The rate
limit is raised for the run (the soak measures stability, not the limiter; tests/test_security.py
covers 429s). Servers this script starts are stopped by their process ids.

Prints a table, then as its last line one JSON object: errors, rss_growth, p99_ms (and more).
Run from the repository root: python bench/soak.py [--requests 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import numpy as np
import requests
import yaml

from harness.ray_head import VENV_BIN, free_port, local_ray_cluster
from lensing.synthetic import MapRequest, generate_map

REPO = Path(__file__).resolve().parents[1]

API_KEY = "soak-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NPY = "application/x-npy"
MIX = [("inference_npy", 30), ("inference_json", 10), ("synthetic_npy", 20), ("synthetic_json", 10),
       ("stats", 8), ("job", 10), ("health", 4), ("models", 4), ("batch", 2), ("batch_status", 2)]


def bodies() -> dict:
    kappa64 = generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence
    kappa32 = generate_map(MapRequest(M_vir=5e12, scale_radius=150.0, grid_size=32)).convergence
    buffer = io.BytesIO()
    np.save(buffer, kappa64)
    return {"npy": buffer.getvalue(),
            "json32": json.dumps({"convergence_map": kappa32.tolist(), "mc_samples": 10}).encode()}


class Soak:
    def __init__(self, base: str, total: int, concurrency: int) -> None:
        self.base, self.total, self.concurrency = base, total, concurrency
        self.bodies = bodies()
        self.issued = self.done = 0
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.job_ids: list[str] = []
        self.batch_ids: list[str] = []
        self.rng = random.Random(0)
        self.names = [name for name, weight in MIX for _ in range(weight)]

    def request(self, name: str) -> tuple[str, str, dict]:
        base, rng = self.base, self.rng
        if name == "inference_npy":
            return "POST", f"{base}/api/v1/inference?mc_samples=10&seed={rng.randrange(10**6)}", {
                "data": self.bodies["npy"], "headers": AUTH | {"Content-Type": NPY}}
        if name == "inference_json":
            return "POST", f"{base}/api/v1/inference", {"data": self.bodies["json32"],
                                                         "headers": AUTH | {"Content-Type": "application/json"}}
        if name == "synthetic_npy":
            spec = {"mass": 10 ** rng.uniform(11.5, 13.5), "grid_size": 64}
            return "POST", f"{base}/api/v1/synthetic", {"json": spec, "headers": AUTH | {"Accept": NPY}}
        if name == "synthetic_json":
            spec = {"mass": 10 ** rng.uniform(11.5, 13.5), "grid_size": 32, "scenario": "CDM"}
            return "POST", f"{base}/api/v1/synthetic", {"json": spec, "headers": AUTH}
        if name == "job":
            return "GET", f"{base}/api/v1/jobs/{rng.choice(self.job_ids[-500:])}", {"headers": AUTH}
        if name == "batch":
            body = {"synthetic": [{"mass": 1e12}, {"mass": 4e12}], "mc_samples": 5}
            return "POST", f"{base}/api/v1/batch", {"json": body, "headers": AUTH}
        if name == "batch_status":
            return "GET", f"{base}/api/v1/batch/{rng.choice(self.batch_ids)}/status", {"headers": AUTH}
        path = {"stats": "/api/v1/stats", "health": "/health", "models": "/api/v1/models"}[name]
        return "GET", base + path, {"headers": AUTH}

    @staticmethod
    def ok(name: str, status: int) -> bool:
        return status == (202 if name == "batch" else 200)

    async def client(self, session: aiohttp.ClientSession) -> None:
        while self.issued < self.total:
            self.issued += 1
            name = self.rng.choice(self.names)
            if (name == "job" and not self.job_ids) or (name == "batch_status" and not self.batch_ids):
                name = "health"  # nothing to look up yet
            method, url, kwargs = self.request(name)
            started = time.perf_counter()
            try:
                async with session.request(method, url, **kwargs) as response:
                    body = await response.read()
                    status = response.status
                    if status == 200 and name.startswith("synthetic"):
                        self.job_ids.append(response.headers.get("X-Job-Id", "unknown-job"))
                    if status == 202:
                        self.batch_ids.append(json.loads(body)["batch_id"])
                if not self.ok(name, status):
                    self.errors[name].append(f"{status} {body[:200]!r}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.errors[name].append(type(exc).__name__)
            self.latency[name].append(1e3 * (time.perf_counter() - started))
            self.done += 1

    async def run(self) -> float:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=300)
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self.client(session) for _ in range(self.concurrency)))
        return time.perf_counter() - started


class MemoryWatch:
    """Samples (progress, {replica: rss bytes}) every `period` s in a thread."""

    def __init__(self, dashboard_url: str, soak: Soak, period: float = 1.0) -> None:
        self.dashboard_url, self.soak, self.period = dashboard_url, soak, period
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.replicas: dict[str, int] = {}

    def find_replicas(self) -> None:
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard_url, filters=[("state", "=", "ALIVE")], limit=1000)
        self.replicas = {f"{a.class_name.split(':')[-1]}#{a.pid}": a.pid for a in actors
                         if a.class_name.startswith("ServeReplica:lensing:")}

    @staticmethod
    def rss(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def loop(self) -> None:
        while not self.stopping.is_set():
            sample = {}
            for name, pid in self.replicas.items():
                try:
                    sample[name] = self.rss(pid)
                except OSError:
                    pass
            self.samples.append((self.soak.done / self.soak.total, sample))
            self.stopping.wait(self.period)

    def growth(self) -> dict[str, tuple[float, float, float]]:
        """replica -> (mean RSS in the second quarter, in the last quarter, growth fraction)."""
        result = {}
        for name in self.replicas:
            second = [s[name] for p, s in self.samples if 0.25 <= p < 0.5 and name in s]
            last = [s[name] for p, s in self.samples if p >= 0.75 and name in s]
            if second and last:
                a, b = float(np.mean(second)), float(np.mean(last))
                result[name] = (a, b, (b - a) / a)
        return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the private head runs without token auth (harness/ray_head.py)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lssoak-") as workdir, \
            local_ray_cluster(num_cpus=2, extra_env={"PYTHONPATH": str(REPO)}) as cluster:
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        config["http_options"]["port"] = port
        application = config["applications"][0]
        application["runtime_env"] = {"env_vars": {"LENSING_API_KEYS": API_KEY}}
        application["args"]["store_url"] = f"sqlite:///{Path(workdir) / 'store.sqlite'}"
        application["args"]["security"].update(require_api_keys=True, api_keys_env="LENSING_API_KEYS",
                                               rate_limit={"requests_per_s": 100000, "burst": 100000})
        path = Path(workdir) / "serve.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "-a", cluster.dashboard_url],
                       env=cluster.env, check=True, capture_output=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(base + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not become healthy")
            time.sleep(1)
        soak = Soak(base, args.requests, args.concurrency)
        watch = MemoryWatch(cluster.dashboard_url, soak)
        watch.find_replicas()
        watch.thread.start()
        print(f"soak: {args.requests} requests at concurrency {args.concurrency}, {len(watch.replicas)} replicas "
              "watched", flush=True)
        seconds = asyncio.run(soak.run())
        watch.stopping.set()
        watch.thread.join(5)
        stats = requests.get(base + "/api/v1/stats", headers=AUTH, timeout=30).json()
        batches_active = stats["active_batches"]

    every = [v for values in soak.latency.values() for v in values]
    errors = sum(len(e) for e in soak.errors.values())
    print(f"\n{'endpoint':16s} {'requests':>9s} {'errors':>7s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for name, _ in MIX:
        values = soak.latency[name]
        print(f"{name:16s} {len(values):9d} {len(soak.errors[name]):7d} {percentile(values, 50):9.1f} "
              f"{percentile(values, 99):9.1f}")
    print(f"{'all':16s} {len(every):9d} {errors:7d} {percentile(every, 50):9.1f} {percentile(every, 99):9.1f}")
    print(f"{len(every) / seconds:.1f} req/s over {seconds:.1f} s; batches still active at the end: {batches_active}")
    for name, messages in soak.errors.items():
        for message in messages[:3]:
            print(f"  error {name}: {message}")
    growth = watch.growth()
    print(f"\n{'replica':28s} {'RSS q2 MiB':>11s} {'RSS q4 MiB':>11s} {'growth':>8s}")
    for name, (second, last, fraction) in sorted(growth.items()):
        print(f"{name:28s} {second / 2**20:11.1f} {last / 2**20:11.1f} {100 * fraction:7.2f}%")
    rss_growth = max((g[2] for g in growth.values()), default=float("nan"))
    total_second = sum(g[0] for g in growth.values())
    total_last = sum(g[1] for g in growth.values())
    print(json.dumps({
        "errors": errors, "rss_growth": round(rss_growth, 4), "p99_ms": round(percentile(every, 99), 1),
        "p50_ms": round(percentile(every, 50), 1), "requests": len(every), "rps": round(len(every) / seconds, 1),
        "seconds": round(seconds, 1),
        "rss_growth_total": round((total_last - total_second) / total_second, 4) if total_second else None,
    }))


if __name__ == "__main__":
    main()
