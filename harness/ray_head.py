"""A private local Ray head for tests: free ports, its own temp dir, started from this venv, always stopped.

`ray start --head --block` runs in a child process; stopping it (SIGTERM to that one process id) makes
Ray tear down every process it started. Nothing is killed by name and `ray stop` is never called, so
other clusters on the machine are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRayCluster:
    """Addresses of a running private Ray head."""

    gcs_address: str
    dashboard_url: str
    metrics_port: int
    temp_dir: str
    env: dict = field(repr=False, default_factory=dict)

    def session_dir(self) -> Path:
        return Path(self.temp_dir) / "session_latest"


def cluster_env() -> dict:
    """Environment for the head and for clients: this venv first on PATH, token auth off."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wait_for_dashboard(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up within {timeout:.0f} s")


@contextmanager
def local_ray_cluster(
    num_cpus: int = 2,
    num_gpus: int | None = None,
    resources: str | None = None,
    timeout: float = 120.0,
    extra_env: dict | None = None,
    extra_args: list[str] | None = None,
    gcs_port: int | None = None,
) -> Iterator[LocalRayCluster]:
    """Start a private Ray head and yield its addresses; stop it on exit, even on failure.

    `extra_args` are appended to `ray start` (e.g. `--autoscaling-config=FILE`); `gcs_port` fixes the GCS
    port (a free one by default) for configs that must name the address before the head starts."""
    temp_dir = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")
    gcs_port, dashboard_port, metrics_port = gcs_port or free_port(), free_port(), free_port()
    env = cluster_env() | (extra_env or {})
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--port={gcs_port}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--metrics-export-port={metrics_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
    ]
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    if resources:
        command.append(f"--resources={resources}")
    command += extra_args or []
    log = open(Path(temp_dir) / "ray-start.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(dashboard_url, process, timeout)
        yield LocalRayCluster(f"127.0.0.1:{gcs_port}", dashboard_url, metrics_port, temp_dir, env)
    finally:
        _shut_down_serve(dashboard_url, env)
        stop_process(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _shut_down_serve(dashboard_url: str, env: dict) -> None:
    """`serve shutdown` when Serve applications run: stopping a head under Serve otherwise waits out
    each replica's and proxy's grace period (about 33 s here, against 9 + 3 s this way). Best effort:
    the head is stopped either way."""
    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/serve/applications/", timeout=5) as response:
            if not json.load(response).get("applications"):
                return
        subprocess.run([str(VENV_BIN / "serve"), "shutdown", "-a", dashboard_url, "-y"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass


def stop_process(process: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM the process we started and wait; SIGKILL its own process group only if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
