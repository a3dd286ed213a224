"""A private local Ray head for tests: free ports, its own temp dir, started from this venv, always stopped.

`ray start --head --block` runs in a child process; stopping it (SIGTERM to that one process id) makes
Ray tear down every process it started. Nothing is killed by name and `ray stop` is never called, so
other clusters on the machine are untouched.
"""

from __future__ import annotations

import itertools
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


_HANDED_OUT: set[int] = set()  # every port free_port has returned in this process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that this process has not handed out before.

    A port picked here stays free until its server binds it, and the kernel may offer it again meanwhile:
    the service's HTTP port, picked before its Ray head starts, once came back as the head's metrics port,
    and the proxy then failed to bind. Remembering the ports handed out keeps such picks apart."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


class EarlyExit(RuntimeError):
    """`ray start` exited before its dashboard answered (a port taken between `free_port` and the start, or
    Ray's fixed 30 s node start-up limit on an overloaded machine); the message ends with its log."""


def _wait_for_dashboard(url: str, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_tail = log_path.read_text(errors="replace")[-2000:]
            raise EarlyExit(f"ray start exited early with code {process.returncode}; its log ends:\n{log_tail}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up within {timeout:.0f} s")


ArgsForGcsPort = Callable[[int], list[str]]


@contextmanager
def local_ray_cluster(
    num_cpus: int = 2,
    num_gpus: int | None = None,
    resources: str | None = None,
    timeout: float = 120.0,
    extra_env: dict | None = None,
    extra_args: list[str] | ArgsForGcsPort | None = None,
    start_attempts: int = 2,
) -> Iterator[LocalRayCluster]:
    """Start a private Ray head and yield its addresses; stop it on exit, even on failure.

    `extra_args` are appended to `ray start` (e.g. `--autoscaling-config=FILE`); a function of the GCS port
    gives them where they must name the address before the head starts. A head that exits early is started
    again, on fresh ports, up to `start_attempts` times in all."""
    for attempt in itertools.count(1):  # at least once, whatever start_attempts is
        try:
            cluster, process = _start_head(num_cpus, num_gpus, resources, timeout, extra_env, extra_args)
            break
        except EarlyExit:
            if attempt >= start_attempts:
                raise
    try:
        yield cluster
    finally:
        _shut_down_serve(cluster.dashboard_url, cluster.env)
        _stop_and_clean(process, cluster.temp_dir)


def _start_head(
    num_cpus: int,
    num_gpus: int | None,
    resources: str | None,
    timeout: float,
    extra_env: dict | None,
    extra_args: list[str] | ArgsForGcsPort | None,
) -> tuple[LocalRayCluster, subprocess.Popen]:
    """`ray start --head --block` on free ports in a new temp dir, once its dashboard answers; on any failure
    the head is stopped and its temp dir removed before the error propagates."""
    temp_dir = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")
    gcs_port, dashboard_port, metrics_port = free_port(), free_port(), free_port()
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
    command += (extra_args(gcs_port) if callable(extra_args) else extra_args) or []
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(dashboard_url, process, timeout, log_path)
    except BaseException:
        _stop_and_clean(process, temp_dir)
        raise
    return LocalRayCluster(f"127.0.0.1:{gcs_port}", dashboard_url, metrics_port, temp_dir, env), process


def _stop_and_clean(process: subprocess.Popen, temp_dir: str) -> None:
    stop_process(process)
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
