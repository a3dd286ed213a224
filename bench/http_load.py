"""HTTP benchmark: this Ray Serve app against the replaced design and the floors, one run, one machine.

Servers, each loaded alone, all on 127.0.0.1:
  (a) original   single-process FastAPI built the replaced system's way: MC Dropout as a loop, JSON only
  (b) fastapi    the same FastAPI service calling our vectorised Predictor (JSON only)
  (c) noop       a Ray Serve endpoint that does nothing, on the same proxy: the framework's floor
  (d) floor      the in-process Predictor on the 64 maps of a bulk request per call (the faster of 1 and 2
                 torch threads): the compute floor, maps/s
  serve          this app (serve_config.yaml), JSON and npy
Workloads: POST /api/v1/synthetic (64 x 64) and POST /api/v1/inference (one 64 x 64 map, mc_samples = 10)
at concurrency 1, 8 and 32; bulk inference (64 maps of 64 x 64 per request, mc_samples = 10) as npy and
JSON at concurrency 4. A closed loop of aiohttp clients; req/s, maps/s, p50 and p99. Where a single-map
request's time goes (proxy, decode, pool call, model, encode) comes from the app's Server-Timing header
at concurrency 1 (proxy = client latency - time in the ingress). Servers this script starts are stopped
by their process ids. The last line of output is one JSON object:
  bulk_fraction_of_compute_floor       serve bulk npy maps/s (c = 4) / (d)                       goal >= 0.6
  bulk_npy_over_json                   serve bulk maps/s, npy / JSON (c = 4)                      goal >= 2
  single_fraction_of_noop_floor        serve single-map npy inference req/s / (c), c = 32         goal >= 0.6
  synthetic_p50_minus_noop_p50_ms      serve JSON synthetic p50 - (c) p50, c = 1                  goal <= 5
  inference_p50_minus_noop_p50_ms      serve single-map npy inference p50 - (c) p50, c = 1        goal <= 10
  inference_vs_original_design         serve / (a), JSON inference req/s at c = 32                goal >= 3
  inference_vs_fastapi_same_predictor  serve / (b), JSON inference req/s at c = 32                goal >= 1.2
  lone_map_model_ms_in_process         the in-process Predictor on one map (mc 10, one thread): what any stack pays
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
BULK_CONCURRENCY = 4
BULK_MAPS = 64
MC_SAMPLES = 10
NPY = "application/x-npy"
STAGES = ("proxy", "ingress", "decode", "render", "pool", "model", "encode")


@dataclass
class Case:
    """One request, pre-encoded so the client spends no time building it."""

    path: str
    body: bytes
    headers: dict = field(default_factory=dict)
    maps: int = 1  # maps per request (a bulk request carries many)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def bulk_maps() -> list[np.ndarray]:
    """BULK_MAPS different halos, the same for the app and the floor."""
    masses = np.geomspace(2e11, 5e13, BULK_MAPS)
    return [generate_map(MapRequest(M_vir=float(m), scale_radius=150.0, grid_size=64)).convergence for m in masses]


def cases() -> dict[str, Case]:
    kappa = generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence
    stack = bulk_maps()
    spec = json.dumps({"profile_type": "NFW", "mass": 2e12, "scale_radius": 200.0, "grid_size": 64}).encode()
    as_json = {"Content-Type": "application/json"}
    query = f"/api/v1/inference?mc_samples={MC_SAMPLES}"
    return {
        "synthetic_json": Case("/api/v1/synthetic", spec, as_json),
        "synthetic_npy": Case("/api/v1/synthetic", spec, as_json | {"Accept": NPY}),
        "inference_json": Case("/api/v1/inference",
                               json.dumps({"convergence_map": kappa.tolist(), "mc_samples": MC_SAMPLES}).encode(),
                               as_json),
        "inference_npy": Case(query, npy_bytes(kappa), {"Content-Type": NPY}),
        "bulk_npy": Case(query, npy_bytes(np.stack(stack)), {"Content-Type": NPY}, BULK_MAPS),
        "bulk_json": Case("/api/v1/inference", json.dumps(
            {"convergence_maps": [m.tolist() for m in stack], "mc_samples": MC_SAMPLES}).encode(), as_json, BULK_MAPS),
    }


def parse_server_timing(header: str) -> dict[str, float]:
    """'ingress;dur=6.1, pool;dur=4.0' -> {'ingress': 6.1, 'pool': 4.0}."""
    stages = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        stages[name] = float(duration)
    return stages


async def load(url: str, case: Case, concurrency: int, duration: float, warmup: float) -> dict:
    """Closed-loop load: `concurrency` clients post `case` back to back; stats of the measured window, with
    the median of every Server-Timing stage (and the proxy's share: client latency - time in the ingress)."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
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
                timing = parse_server_timing(response.headers.get("Server-Timing", ""))
            latency = time.perf_counter() - started
            if measuring:
                latencies.append(latency)
                errors += not ok
                if "ingress" in timing:
                    timing["proxy"] = 1e3 * latency - timing["ingress"]
                for name, ms in timing.items():
                    stages.setdefault(name, []).append(ms)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring, started = True, time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"rps": round(len(ms) / elapsed, 1), "maps_per_s": round(len(ms) * case.maps / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "requests": len(ms), "errors": errors,
            "stages_p50_ms": {name: round(float(np.median(v)), 2) for name, v in stages.items()}}


def measure(server: str, url: str, names: list[str], duration: float, results: dict,
            concurrencies: tuple[int, ...] = CONCURRENCY) -> None:
    all_cases = cases()
    for name in names:
        for concurrency in concurrencies:
            stats = asyncio.run(load(url, all_cases[name], concurrency, duration, warmup=min(1.0, duration / 4)))
            results.setdefault(server, {}).setdefault(name, {})[str(concurrency)] = stats
            print(f"{server:9s} {name:15s} c={concurrency:<3d} {stats['rps']:8.1f} req/s {stats['maps_per_s']:8.1f} "
                  f"maps/s  p50 {stats['p50_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  errors {stats['errors']}",
                  flush=True)


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


def compute_floor(duration: float, weights: str | None) -> dict[int, float]:
    """(d): maps/s of the in-process Predictor on the bulk request's maps, one call per 64, by torch threads."""
    predictor = load_predictor(weights)
    maps = bulk_maps()
    rates = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        predictor.predict(maps, mc_samples=MC_SAMPLES, seed=list(range(len(maps))))
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < duration:
            predictor.predict(maps, mc_samples=MC_SAMPLES, seed=list(range(done, done + len(maps))))
            done += len(maps)
        rates[threads] = done / (time.perf_counter() - started)
        print(f"floor     predictor x{len(maps)}, {threads} thread(s) {rates[threads]:8.1f} maps/s", flush=True)
    torch.set_num_threads(1)
    return rates


def lone_map_ms(weights: str | None, repeats: int = 50) -> float:
    """p50 of the in-process Predictor on one map (mc_samples = 10, one torch thread, as the pool replica):
    the compute a lone request cannot avoid, whatever the serving stack."""
    predictor = load_predictor(weights)
    kappa = generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence
    torch.set_num_threads(1)
    for seed in range(5):
        predictor.predict([kappa], mc_samples=MC_SAMPLES, seed=seed)
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        predictor.predict([kappa], mc_samples=MC_SAMPLES, seed=seed)
        times.append(1e3 * (time.perf_counter() - started))
    median = float(np.median(times))
    print(f"floor     predictor x1, 1 thread: p50 {median:.2f} ms per lone map", flush=True)
    return median


def serve_app(duration: float, weights: str | None, results: dict) -> None:
    """This app plus the no-op app on a private Ray head, deployed with `serve deploy`, loaded, stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lsbench-") as workdir, \
            local_ray_cluster(num_cpus=2, extra_env={"PYTHONPATH": str(REPO)}) as cluster:
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        config["http_options"]["port"] = port
        args = config["applications"][0].setdefault("args", {})
        args["store_url"] = f"sqlite:///{Path(workdir) / 'store.sqlite'}"
        if weights:
            args["predictor"] = {"weights": f"{weights}/pinn.safetensors", "card": f"{weights}/pinn_card.json"}
        config["applications"].append({"name": "noop", "route_prefix": "/noop", "import_path": "bench.serve_noop:app"})
        path = Path(workdir) / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "-a", cluster.dashboard_url],
                       env=cluster.env, check=True, capture_output=True)
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/health", 300)
        noop = Case("/noop/", b"{}", {"Content-Type": "application/json"})
        for concurrency in CONCURRENCY:
            stats = asyncio.run(load(base, noop, concurrency, duration, warmup=min(1.0, duration / 4)))
            results.setdefault("noop", {}).setdefault("noop", {})[str(concurrency)] = stats
            print(f"noop      {'noop':15s} c={concurrency:<3d} {stats['rps']:8.1f} req/s  p50 {stats['p50_ms']:8.2f} ms"
                  f"  p99 {stats['p99_ms']:8.2f} ms  errors {stats['errors']}", flush=True)
        measure("serve", base, ["synthetic_json", "synthetic_npy", "inference_json", "inference_npy"], duration,
                results)
        measure("serve", base, ["bulk_npy", "bulk_json"], duration, results, (BULK_CONCURRENCY,))


def print_stages(results: dict) -> None:
    """Where a lone request's time goes (medians at concurrency 1, ms)."""
    print("\nwhere a lone request's time goes (p50 at c = 1, ms; proxy = client - ingress)")
    print(f"{'request':16s}" + "".join(f"{stage:>9s}" for stage in ("client", *STAGES)))
    for name in ("synthetic_json", "synthetic_npy", "inference_json", "inference_npy"):
        cell = results["serve"][name]["1"]
        stages = cell["stages_p50_ms"]
        print(f"{name:16s}{cell['p50_ms']:9.2f}" + "".join(
            f"{stages[s]:9.2f}" if s in stages else f"{'-':>9s}" for s in STAGES))
    print(f"{'noop':16s}{results['noop']['noop']['1']['p50_ms']:9.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell (plus warm-up)")
    parser.add_argument("--weights", help="directory with pinn.safetensors + pinn_card.json (default: shipped)")
    args = parser.parse_args()
    started = time.time()
    results: dict = {}
    weights = str(Path(args.weights).resolve()) if args.weights else None
    floors = compute_floor(args.duration, weights)
    lone_ms = lone_map_ms(weights)
    fastapi_baseline("loop", args.duration, weights, results)
    fastapi_baseline("vectorised", args.duration, weights, results)
    serve_app(args.duration, weights, results)
    print_stages(results)
    cell = lambda server, name, c: results[server][name][str(c)]  # noqa: E731
    floor = max(floors.values())
    results["floor_maps_per_s"] = {str(k): round(v, 1) for k, v in floors.items()}
    results["lone_map_model_ms"] = round(lone_ms, 2)
    results["seconds"] = round(time.time() - started, 1)
    print(json.dumps(results))
    noop_p50 = cell("noop", "noop", 1)["p50_ms"]
    print(json.dumps({
        "bulk_fraction_of_compute_floor": round(cell("serve", "bulk_npy", BULK_CONCURRENCY)["maps_per_s"] / floor, 2),
        "bulk_npy_over_json": round(cell("serve", "bulk_npy", BULK_CONCURRENCY)["maps_per_s"]
                                    / cell("serve", "bulk_json", BULK_CONCURRENCY)["maps_per_s"], 2),
        "single_fraction_of_noop_floor": round(cell("serve", "inference_npy", 32)["rps"]
                                               / cell("noop", "noop", 32)["rps"], 2),
        "synthetic_p50_minus_noop_p50_ms": round(cell("serve", "synthetic_json", 1)["p50_ms"] - noop_p50, 2),
        "inference_p50_minus_noop_p50_ms": round(cell("serve", "inference_npy", 1)["p50_ms"] - noop_p50, 2),
        "lone_map_model_ms_in_process": round(lone_ms, 2),
        "inference_vs_original_design": round(cell("serve", "inference_json", 32)["rps"]
                                              / cell("original", "inference_json", 32)["rps"], 2),
        "inference_vs_fastapi_same_predictor": round(cell("serve", "inference_json", 32)["rps"]
                                                     / cell("fastapi", "inference_json", 32)["rps"], 2),
    }))


if __name__ == "__main__":
    main()
