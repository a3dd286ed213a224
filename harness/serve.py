"""The app on a private local cluster, for tests and benchmarks: configs, `serve deploy`, waiting, replicas.

Configs are derived from the shipped serve_config.yaml (so the tests exercise it), with a free HTTP port,
a temporary store and short timers. Deploys go through the `serve` CLI, as an operator would. The
serve configs state only what differs from the code's defaults, so `deployment` adds an entry where a
test changes one, and `effective_deployment` reads a deployment's options with the defaults filled in.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from harness.ray_head import VENV_BIN, LocalRayCluster

REPO = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO / "serve_config.yaml"
GPU_CONFIG = REPO / "configs" / "serve-gpu.yaml"
APP = "lensing"
MIB = 1024 * 1024


@dataclass
class LiveService:
    """The deployed test app: its URL, the config it runs and where that config lives."""

    cluster: LocalRayCluster
    base_url: str
    config: dict
    config_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def make_config(port: int, store_path: Path) -> dict:
    """serve_config.yaml with a free port, a temporary store and timers short enough for tests.

    LENSING_SERVE_TEST_WEIGHTS=DIR (pinn.safetensors + pinn_card.json) serves a candidate model instead of
    the shipped one, e.g. to check new weights before they replace lensing/weights.
    """
    config = load_yaml(SERVE_CONFIG)
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args.update(store_url=f"sqlite:///{store_path}", max_body_bytes=8 * MIB, stats_flush_s=0.5)
    args.setdefault("batch", {}).update(concurrency=2, lease_ttl_s=3.0)
    args.setdefault("predictor", {})
    if weights := os.environ.get("LENSING_SERVE_TEST_WEIGHTS"):
        args["predictor"].update(weights=f"{weights}/pinn.safetensors", card=f"{weights}/pinn_card.json")
    deployment(config, "PINNPredictor")["user_config"] = {"batch_wait_timeout_s": 0.01}
    return config


def deployment(config: dict, name: str, app: str = APP) -> dict:
    """The `deployments` entry called `name` of application `app` in a config (added, empty, if absent)."""
    application = next(a for a in config["applications"] if a["name"] == app)
    entries = application.setdefault("deployments", [])
    entry = next((d for d in entries if d["name"] == name), None)
    if entry is None:
        entry = {"name": name}
        entries.append(entry)
    return entry


def effective_deployment(config: dict, name: str, app: str = APP) -> dict:
    """A deployment's replica options and user_config as they run: the code's defaults, overridden by the config."""
    from deployments.settings import REPLICA_DEFAULTS, PoolBatching

    options = REPLICA_DEFAULTS[name].deployment_options()
    if name == "PINNPredictor":
        options["user_config"] = PoolBatching().model_dump()
    for key, value in deployment(copy.deepcopy(config), name, app).items():
        options[key] = options.get(key, {}) | value if isinstance(value, dict) else value
    return options


def with_changes(config: dict, change: Callable[[dict], Any]) -> dict:
    changed = copy.deepcopy(config)
    change(changed)
    return changed


def serve_deploy(cluster: LocalRayCluster, config: dict, path: Path) -> None:
    """`serve deploy` a config dict (written to `path`) onto the cluster."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(path), "-a", cluster.dashboard_url],
                            env=cluster.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_until(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.5) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} (after {timeout:.0f} s)")
        time.sleep(interval)


def serve_applications(cluster: LocalRayCluster) -> dict:
    """The cluster's Serve applications by name, from the dashboard's REST API (what `serve status` reads).

    Unlike `serve.status()` in the test process, this never holds a handle to a controller that a
    `serve shutdown` has killed."""
    response = requests.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10)
    response.raise_for_status()
    return response.json().get("applications") or {}


def healthy(base_url: str) -> bool:
    return requests.get(base_url + "/health", timeout=5).status_code == 200


def deploy_with_retry(cluster, config: dict, path, attempts: int = 3) -> None:
    """`serve deploy`, retried: on a loaded machine the dashboard sometimes drops the first connection."""
    for attempt in range(attempts):
        try:
            return serve_deploy(cluster, config, path)
        except AssertionError:
            if attempt == attempts - 1:
                raise
            wait_until(lambda: requests.get(f"{cluster.dashboard_url}/api/version", timeout=5).ok, 90,
                       "the Ray dashboard did not come back")


def readme_section(heading: str = "## Run the service") -> str:
    """The README section `heading`, up to the next heading of the same level."""
    text = (REPO / "README.md").read_text()
    if heading not in text:
        raise KeyError(f"README.md has no section {heading!r}")
    section = text[text.index(heading) + len(heading):]
    following = re.search(r"^## ", section, flags=re.MULTILINE)
    return section[: following.start()] if following else section


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


@contextmanager
def deployed(workdir: Path, change: Callable[[dict], Any] | None = None, num_cpus: int = 2,
             num_gpus: int | None = None, extra_env: dict | None = None, timeout: float = 240,
             resources: str | None = None) -> Iterator[LiveService]:
    """A private cluster with the app deployed from `make_config` (then `change`d), healthy; the calling
    process is a Ray driver of it (for ray.util.state and ray.kill). Everything is stopped on exit.
    `resources` are the head's custom resources (JSON, as `ray start --resources`)."""
    import ray

    from harness.ray_head import free_port, local_ray_cluster

    port = free_port()
    previous_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {"PYTHONPATH": str(REPO)} | (extra_env or {})
    try:
        with local_ray_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, extra_env=env) as cluster:
            ray.init(address=cluster.gcs_address, logging_level=logging.ERROR)
            try:
                config = make_config(port, workdir / "store.sqlite")
                if change is not None:
                    change(config)
                service = LiveService(cluster, f"http://127.0.0.1:{port}", config, workdir / "serve.yaml")
                serve_deploy(cluster, config, service.config_path)
                wait_until(lambda: healthy(service.base_url), timeout, "the app did not become healthy")
                yield service
            finally:
                ray.shutdown()
    finally:
        if previous_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_auth


def replica_actors(service: LiveService, deployment_name: str) -> list:
    """Live actors (ray.util.state records) of a deployment's replicas."""
    from ray.util.state import list_actors

    return list_actors(address=service.cluster.dashboard_url, filters=[
        ("class_name", "=", f"ServeReplica:{APP}:{deployment_name}"), ("state", "=", "ALIVE")])
