"""GPU check: the PINN pool at 1 and 4 replicas of 0.25 GPU, and bulk HTTP inference (run by bench/gpu.sh).

`python -m bench.gpu --dry-run` runs the same steps on a CPU machine with one logical GPU (the replicas then
compute on the CPU), to check the script itself; its figures say nothing about a GPU.

Needs a CUDA device, torch built for it and the project installed with its `serve` extra. Everything runs on a
private Ray head on free ports (harness/ray_head.py), stopped at the end. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.http_load import BULK_MAPS, MC_SAMPLES, Case, bulk_maps, load, npy_bytes
from harness.ray_head import VENV_BIN, free_port, local_ray_cluster
from harness.serve import deployment, wait_until

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = REPO / "configs" / "serve-gpu.yaml"
KEY = "gpu-bench-key-0123456789abcdef"
POOL_APP = "pool"
CONCURRENCY = 8


def deploy(config: dict, path: Path, dashboard_url: str, env: dict) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "-a", dashboard_url], env=env, check=True,
                   capture_output=True, timeout=180)


def pool_config(shipped: dict, replicas: int, device: str) -> dict:
    """The shipped config's PINN pool alone (build_predictor_app), with a fixed number of replicas."""
    pinn = copy.deepcopy(deployment(shipped, "PINNPredictor"))
    pinn.pop("autoscaling_config", None)
    pinn["num_replicas"] = replicas
    return {"proxy_location": "Disabled", "applications": [
        {"name": POOL_APP, "route_prefix": None, "import_path": "deployments.app:build_predictor_app",
         "args": {"device": device}, "deployments": [pinn]}]}


def pool_rate(seconds: float) -> float:
    """Maps/s through the pool's handle: CONCURRENCY outstanding 64-map stacks."""
    from ray import serve

    from deployments.pinn_pool import InferenceItem
    from lensing.cosmology import MapGeometry

    handle = serve.get_app_handle(POOL_APP)
    maps = bulk_maps()

    def stack(offset: int) -> list[InferenceItem]:
        return [InferenceItem(kappa, MapGeometry(), MC_SAMPLES, offset + k) for k, kappa in enumerate(maps)]

    handle.infer_stack.remote(stack(0)).result(timeout_s=300)  # warm-up
    done, started, offset = 0, time.perf_counter(), 0
    pending = [handle.infer_stack.remote(stack(offset := offset + BULK_MAPS)) for _ in range(CONCURRENCY)]
    while time.perf_counter() - started < seconds:
        pending.pop(0).result(timeout_s=300)
        done += BULK_MAPS
        pending.append(handle.infer_stack.remote(stack(offset := offset + BULK_MAPS)))
    rate = done / (time.perf_counter() - started)
    for response in pending:
        response.result(timeout_s=300)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per figure")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: one logical GPU, replicas on the CPU")
    args = parser.parse_args()
    import ray

    gpus = 1 if args.dry_run else torch.cuda.device_count()
    if gpus == 0:
        raise SystemExit("bench/gpu.py: torch sees no CUDA device (--dry-run checks the script on a CPU)")
    shipped = yaml.safe_load(GPU_CONFIG.read_text())
    results: dict = {"gpu": "none (dry run)" if args.dry_run else torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory(prefix="lsgpu-") as workdir, \
            local_ray_cluster(num_cpus=8, num_gpus=gpus, extra_env={"PYTHONPATH": str(REPO)}) as cluster:
        ray.init(address=cluster.gcs_address, logging_level=logging.ERROR)
        for replicas in (1, 4):
            device = "auto" if args.dry_run else "cuda"
            deploy(pool_config(shipped, replicas, device), Path(workdir) / f"pool-{replicas}.yaml",
                   cluster.dashboard_url, cluster.env)
            rate = pool_rate(args.seconds)
            results[f"pool_maps_per_s_{replicas}_replica{'s' if replicas > 1 else ''}"] = round(rate, 1)
            print(f"PINN pool, {replicas} x 0.25 GPU: {rate:.0f} maps/s", flush=True)
        subprocess.run([str(VENV_BIN / "serve"), "shutdown", "-y", "-a", cluster.dashboard_url], env=cluster.env,
                       check=True, capture_output=True, timeout=120)
        config = copy.deepcopy(shipped)
        port = free_port()
        config["http_options"]["port"] = port
        application = config["applications"][0]
        application["runtime_env"] = {"env_vars": {"LENSING_GPU_BENCH_KEYS": KEY}}
        application["args"]["store_url"] = f"sqlite:///{Path(workdir) / 'store.sqlite'}"
        application["args"].pop("store_url_env", None)
        application["args"]["security"] = {"require_api_keys": True, "api_keys_env": "LENSING_GPU_BENCH_KEYS"}
        deploy(config, Path(workdir) / "app.yaml", cluster.dashboard_url, cluster.env)
        base = f"http://127.0.0.1:{port}"
        import requests

        wait_until(lambda: requests.get(base + "/health", timeout=5).ok, 300, "the app did not become healthy")
        case = Case(f"/api/v1/inference?mc_samples={MC_SAMPLES}", npy_bytes(np.stack(bulk_maps())),
                    {"Content-Type": "application/x-npy", "Authorization": f"Bearer {KEY}"}, BULK_MAPS)
        stats = asyncio.run(load(base, case, CONCURRENCY, args.seconds, warmup=3.0))
        results["bulk_http_maps_per_s"] = stats["maps_per_s"]
        results["bulk_http_errors"] = stats["errors"]
        print(f"bulk HTTP, {BULK_MAPS} maps a request at concurrency {CONCURRENCY}: {stats['maps_per_s']:.0f} maps/s",
              flush=True)
        ray.shutdown()
    results["pool_scaling_4_over_1"] = round(results["pool_maps_per_s_4_replicas"]
                                             / results["pool_maps_per_s_1_replica"], 2)
    results["bulk_http_fraction_of_pool"] = round(results["bulk_http_maps_per_s"]
                                                  / results["pool_maps_per_s_4_replicas"], 2)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
