"""HTTP benchmark: this Ray Serve app against the replaced design and the floors, one run, one machine.

Servers, each loaded alone, all on 127.0.0.1:
  (a) original   single-process FastAPI built the replaced system's way: MC Dropout as a loop, JSON only
  (b) fastapi    the same FastAPI service calling our vectorised Predictor (JSON only)
  (c) noop       a Ray Serve endpoint that does nothing: the framework's floor
  (d) floor      the in-process batched Predictor (32 maps per call): the compute floor, maps/s
  serve          this app (serve_config.yaml), JSON and npy
Workloads: POST /api/v1/synthetic (64 x 64) and POST /api/v1/inference (64 x 64, mc_samples = 10), at
concurrency 1, 8 and 32 (a closed loop of aiohttp clients), reporting req/s, p50 and p99 latency.
Every model runs with one torch thread (the Serve replica's setting), so the comparison is of serving.
Servers this script starts (uvicorn processes, a private Ray head) are stopped by their process ids.
The last line of output is one JSON object:
  inference_vs_original_design        serve / (a), JSON inference req/s at concurrency 32
  inference_vs_fastapi_same_predictor serve / (b), JSON inference req/s at concurrency 32
  inference_fraction_of_compute_floor serve npy inference req/s at concurrency 32 / (d) maps/s
  synthetic_p50_ms_c1                 serve JSON synthetic p50 at concurrency 1
  npy_over_json                       serve inference req/s at concurrency 32, npy / JSON
Run from the repository root: python bench/http_load.py [--duration 4] [--weights DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import requests
import torch
import yaml

from harness.ray_head import VENV_BIN, cluster_env, free_port, local_ray_cluster, stop_process
from lensing.pinn.predictor import Predictor
from lensing.synthetic import MapRequest, generate_map

REPO = Path(__file__).resolve().parents[1]

CONCURRENCY = (1, 8, 32)
MC_SAMPLES = 10
NPY = "application/x-npy"


@dataclass
class Case:
    """One request, pre-encoded so the client spends no time building it."""

    endpoint: str
    fmt: str
    path: str
    body: bytes
    headers: dict = field(default_factory=dict)


def cases() -> dict[str, Case]:
    kappa = generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence
    npy = io.BytesIO()
    np.save(npy, kappa)
    spec = json.dumps({"profile_type": "NFW", "mass": 2e12, "scale_radius": 200.0, "grid_size": 64}).encode()
    json_headers = {"Content-Type": "application/json"}
    return {
        "synthetic_json": Case("synthetic", "json", "/api/v1/synthetic", spec, json_headers),
        "synthetic_npy": Case("synthetic", "npy", "/api/v1/synthetic", spec, json_headers | {"Accept": NPY}),
        "inference_json": Case("inference", "json", "/api/v1/inference",
                               json.dumps({"convergence_map": kappa.tolist(), "mc_samples": MC_SAMPLES}).encode(),
                               json_headers),
        "inference_npy": Case("inference", "npy", f"/api/v1/inference?mc_samples={MC_SAMPLES}", npy.getvalue(),
                              {"Content-Type": NPY}),
    }


async def load(url: str, case: Case, concurrency: int, duration: float, warmup: float) -> dict:
    """Closed-loop load: `concurrency` clients post `case` back to back; stats of the measured window."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    deadline = time.perf_counter() + warmup + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(url + case.path, data=case.body, headers=case.headers) as response:
                await response.read()
                ok = response.status == 200
            if measuring:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring, started = True, time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"rps": round(len(ms) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "requests": len(ms), "errors": errors}


def measure(server: str, url: str, names: list[str], duration: float, results: dict) -> None:
    all_cases = cases()
    for name in names:
        for concurrency in CONCURRENCY:
            stats = asyncio.run(load(url, all_cases[name], concurrency, duration, warmup=min(1.0, duration / 4)))
            results.setdefault(server, {}).setdefault(name, {})[str(concurrency)] = stats
            print(f"{server:9s} {name:15s} c={concurrency:<3d} {stats['rps']:8.1f} req/s  p50 {stats['p50_ms']:8.2f} ms"
                  f"  p99 {stats['p99_ms']:8.2f} ms  errors {stats['errors']}", flush=True)


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up within {timeout:.0f} s")


def fastapi_baseline(mode: str, duration: float, weights: str | None, results: dict) -> None:
    """Start (a) or (b) under uvicorn (one worker), load it, stop it by pid."""
    port = free_port()
    env = cluster_env() | {"BASELINE_MODE": mode, "PYTHONPATH": str(REPO)}
    env |= {"BASELINE_WEIGHTS": weights} if weights else {}
    command = [str(VENV_BIN / "python"), "-m", "uvicorn", "bench.fastapi_baseline:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/docs", 120, process)
        name = "original" if mode == "loop" else "fastapi"
        measure(name, f"http://127.0.0.1:{port}", ["synthetic_json", "inference_json"], duration, results)
    finally:
        stop_process(process, grace=15)


def load_predictor(weights: str | None) -> Predictor:
    if weights:
        return Predictor.from_files(f"{weights}/pinn.safetensors", f"{weights}/pinn_card.json", device="cpu")
    return Predictor.from_package(device="cpu")


def compute_floor(duration: float, weights: str | None, batch: int = 32) -> float:
    """(d): maps/s of the in-process Predictor on batches of `batch` maps (one torch thread)."""
    torch.set_num_threads(1)
    predictor = load_predictor(weights)
    kappa = generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence
    maps = [kappa] * batch
    predictor.predict(maps, mc_samples=MC_SAMPLES, seed=list(range(batch)))
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        predictor.predict(maps, mc_samples=MC_SAMPLES, seed=list(range(done, done + batch)))
        done += batch
    rate = done / (time.perf_counter() - started)
    print(f"floor     predictor x{batch:<6d} {rate:8.1f} maps/s", flush=True)
    return rate


def serve_app(duration: float, weights: str | None, results: dict) -> None:
    """This app plus the no-op app on a private Ray head, deployed with `serve deploy`, loaded, stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lsbench-") as workdir, \
            local_ray_cluster(num_cpus=2, extra_env={"PYTHONPATH": str(REPO)}) as cluster:
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        config["http_options"]["port"] = port
        args = config["applications"][0]["args"]
        args["store_url"] = f"sqlite:///{Path(workdir) / 'store.sqlite'}"
        if weights:
            args["predictor"].update(weights=f"{weights}/pinn.safetensors", card=f"{weights}/pinn_card.json")
        config["applications"].append({"name": "noop", "route_prefix": "/noop", "import_path": "bench.serve_noop:app"})
        path = Path(workdir) / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "-a", cluster.dashboard_url],
                       env=cluster.env, check=True, capture_output=True)
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/health", 300)
        noop = Case("noop", "json", "/noop/", b"{}", {"Content-Type": "application/json"})
        for concurrency in CONCURRENCY:
            stats = asyncio.run(load(base, noop, concurrency, duration, warmup=min(1.0, duration / 4)))
            results.setdefault("noop", {}).setdefault("noop", {})[str(concurrency)] = stats
            print(f"noop      {'noop':15s} c={concurrency:<3d} {stats['rps']:8.1f} req/s  p50 {stats['p50_ms']:8.2f} ms"
                  f"  p99 {stats['p99_ms']:8.2f} ms  errors {stats['errors']}", flush=True)
        workloads = ["synthetic_json", "synthetic_npy", "inference_json", "inference_npy"]
        measure("serve", base, workloads, duration, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (plus warm-up)")
    parser.add_argument("--weights", help="directory with pinn.safetensors + pinn_card.json (default: shipped)")
    args = parser.parse_args()
    started = time.time()
    results: dict = {}
    weights = str(Path(args.weights).resolve()) if args.weights else None
    floor = compute_floor(args.duration, weights)
    fastapi_baseline("loop", args.duration, weights, results)
    fastapi_baseline("vectorised", args.duration, weights, results)
    serve_app(args.duration, weights, results)
    rps = lambda server, name: results[server][name]["32"]["rps"]  # noqa: E731
    results["floor_maps_per_s"] = round(floor, 1)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results))
    print(json.dumps({
        "inference_vs_original_design": round(rps("serve", "inference_json") / rps("original", "inference_json"), 2),
        "inference_vs_fastapi_same_predictor":
            round(rps("serve", "inference_json") / rps("fastapi", "inference_json"), 2),
        "inference_fraction_of_compute_floor": round(rps("serve", "inference_npy") / floor, 2),
        "synthetic_p50_ms_c1": results["serve"]["synthetic_json"]["1"]["p50_ms"],
        "npy_over_json": round(rps("serve", "inference_npy") / rps("serve", "inference_json"), 2),
    }))


if __name__ == "__main__":
    main()
