"""The README's flows as a new user runs them, command for command: `lensing-serve` (with a stale Ray address
recorded, as an unclean stop leaves it), the dashboard's token, a sweep on a head of its own beside the
service, a sweep submitted to the service's Ray while that second Ray runs, Ctrl-C stopping each with
nothing left behind, and a sweep without the service.

Isolation: everything runs in a private network namespace (`unshare -rn`: its own loopback and nothing
else), so the README's default ports (8000, 8265, 52365, 6380, ...) belong to this test alone, other Ray
clusters on the machine can neither clash with it nor be reached from it, and the commands need no port
changes. HOME is a temporary directory (so `~/.ray/auth_token` and the job store under `~/.cache` are the
test's), and so is RAY_TMPDIR (so the `ray_current_cluster` file Ray reads is the test's). The README's
commands run as written, except that `/tmp/sweeps/` and `/tmp/ray-sweeps` become temporary paths and
`. .venv/bin/activate` activates this interpreter's venv. Every process started is stopped by process
group or by pid at the end, even on failure; the module is skipped where unprivileged user namespaces
are not available.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.serve import REPO, readme_section

VENV = Path(sys.prefix)
STALE_ADDRESS = "127.0.0.1:6379"  # nothing listens there inside the namespace
SERVICE_TIMEOUT_S = 420  # /health must answer within this (133 s measured on a busy 2-core machine)

# --- README text ----------------------------------------------------------------------------------------


def subsection(heading: str) -> str:
    """The README text under `heading` (any level), up to the next heading of the same or a higher level."""
    text = (REPO / "README.md").read_text()
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n") + len(heading) + 1
    following = re.search(rf"^#{{1,{level}}} ", text[start:], flags=re.MULTILINE)
    return text[start: start + following.start()] if following else text[start:]


def fenced(markdown: str, language: str) -> list[str]:
    """Code blocks of `language`, also those indented under a list item (dedented)."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", markdown, flags=re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in blocks]


def serve_command() -> str:
    """The README's one command that runs the service: the same in Quick start and in "Run the service"."""
    quick = fenced(readme_section("## Quick start"), "bash")[0].strip()
    run = fenced(readme_section("## Run the service"), "console")[0].strip()
    assert quick.endswith("&& " + run), (quick, run)
    return run


SERVICE_SWEEP = "### On the service's Ray (with `lensing-serve` up)"


def test_the_readme_runs_the_service_with_lensing_serve():
    """Items 1 and 10: plain `serve run` joins a dead recorded Ray, and jobs on a `serve run --address=local`
    Ray are sent to the recorded (or any) Ray; no command block of the README runs the service that way."""
    text = (REPO / "README.md").read_text()
    assert serve_command() == "lensing-serve serve_config.yaml"
    commands = "\n".join(fenced(text, "bash") + fenced(text, "console"))
    assert "serve run" not in commands


def test_lensing_serve_fails_fast_without_a_config():
    result = subprocess.run([sys.executable, "-m", "deployments.run", "no-such-config.yaml"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such config file: no-such-config.yaml" in result.stderr


def test_the_sweep_beside_the_service_is_small_yaml_with_smaller_actors():
    """configs/sweeps/small-beside-serve.yaml draws the same maps as small.yaml (so either resumes the other's
    output); only `execution` differs, small enough to fit the 0.4 logical CPU the service leaves on 2 cores."""
    from cluster.sweep_config import load_config

    small = load_config(REPO / "configs/sweeps/small.yaml")
    beside = load_config(REPO / "configs/sweeps/small-beside-serve.yaml")
    assert beside.data_hash() == small.data_hash() and beside.name == small.name
    assert beside.execution.pool_size[1] * beside.execution.cpus_per_actor <= 0.4 - 0.1  # with room to spare
    assert "small-beside-serve.yaml" in subsection(SERVICE_SWEEP)


# --- the private namespace ------------------------------------------------------------------------------

LOOPBACK_UP = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))                              # SIOCSIFFLAGS, IFF_UP
"""
HTTP = """
import sys, urllib.request, urllib.error
method, url, token = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status); print(response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code); print(error.read().decode())
except OSError as error:
    print(0); print(error)
"""
PORT_OPEN = """
import socket, sys
with socket.socket() as s:
    s.settimeout(2)
    print(int(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0))
"""


@dataclass
class Namespace:
    """A network namespace held by one `sleep`, a private HOME and RAY_TMPDIR, and what was started in it."""

    root: Path
    holder: subprocess.Popen
    env: dict
    started: list[subprocess.Popen] = field(default_factory=list)

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-U", "-n", "--preserve-credentials", *args]

    def run(self, script: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        """A README block, with bash -euo pipefail, from the repository root."""
        try:
            result = subprocess.run(self.command("bash", "-euo", "pipefail", "-c", script), cwd=REPO,
                                    env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as timeout_error:
            output = [(stream or b"").decode(errors="replace")[-4000:]
                      for stream in (timeout_error.output, timeout_error.stderr)]
            raise AssertionError(f"{script}\ntimed out after {timeout:.0f} s\n--- stdout\n{output[0]}\n"
                                 f"--- stderr\n{output[1]}") from None
        if check:
            assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        return result

    def start(self, script: str, log: Path) -> subprocess.Popen:
        """A long-running README command in a session (and process group) of its own, as in a terminal."""
        with open(log, "w") as out:
            process = subprocess.Popen(self.command("bash", "-c", script), cwd=REPO, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process

    def python(self, code: str, *args: str) -> str:
        result = subprocess.run(self.command(sys.executable, "-c", code, *args), env=self.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def http(self, method: str, url: str, token: str = "") -> tuple[int, str]:
        status, _, body = self.python(HTTP, method, url, token).partition("\n")
        return int(status), body

    def port_open(self, port: int) -> bool:
        return self.python(PORT_OPEN, str(port)).strip() == "1"

    def processes(self) -> list[int]:
        """Pids of every process in the namespace but its holder."""
        inode = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == inode:
                        found.append(int(entry))
                except OSError:  # gone, or not ours
                    pass
        return found


def session_pids(session: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def wait_for(predicate, timeout: float, message: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} (after {timeout:.0f} s)")
        time.sleep(interval)


def ctrl_c(process: subprocess.Popen, timeout: float) -> None:
    """What Ctrl-C in its terminal does: SIGINT to the foreground process group; then wait for it to end."""
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout)


def kill_everything(ns: Namespace) -> None:
    """SIGKILL, by pid, whatever is still running in the namespace or in a session we started, then the holder."""
    for _ in range(3):
        pids = set(ns.processes())
        for process in ns.started:
            pids.update(session_pids(process.pid))
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(1)
    ns.holder.kill()
    ns.holder.wait(10)


def literal(block: str, ns: Namespace, sweeps: str = "sweeps") -> str:
    """A README block with only its temporary paths and the venv to activate replaced (module docstring)."""
    return (block.replace(". .venv/bin/activate", f". {VENV}/bin/activate")
            .replace("/tmp/ray-sweeps", str(ns.root / "ray-sweeps"))
            .replace("/tmp/sweeps/", f"{ns.root}/{sweeps}/"))


@pytest.fixture(scope="module")
def ns() -> Iterator[Namespace]:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs unshare and nsenter (util-linux)")
    if not (VENV / "bin" / "activate").exists():
        pytest.skip("the README's commands activate a venv; run the tests from one")
    root = Path(tempfile.mkdtemp(prefix="lsrf-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    holder = subprocess.Popen(["unshare", "-rn", "sleep", "infinity"], start_new_session=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV"))}
    env |= {"HOME": str(root / "home"), "RAY_TMPDIR": str(root / "tmp"), "PYTHONUNBUFFERED": "1",
            "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    namespace = Namespace(root, holder, env)
    try:
        (root / "home").mkdir()
        (root / "tmp" / "ray").mkdir(parents=True)
        time.sleep(0.5)
        if holder.poll() is not None or subprocess.run(namespace.command("true"), capture_output=True).returncode:
            pytest.skip("unprivileged user and network namespaces are not available here")
        namespace.python(LOOPBACK_UP)
        # What an unclean stop of a `ray start` head leaves behind (item 10): the address of a dead GCS
        (root / "tmp" / "ray" / "ray_current_cluster").write_text(STALE_ADDRESS)
        yield namespace
    finally:
        kill_everything(namespace)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def service(ns: Namespace) -> Iterator[subprocess.Popen]:
    """The README's `serve run` in the namespace, healthy, with the stale address still recorded."""
    log = ns.root / "serve-run.log"
    process = ns.start(serve_command(), log)
    started = time.monotonic()

    def healthy():
        if process.poll() is not None:
            raise AssertionError(f"serve run exited with {process.returncode}:\n{log.read_text()[-5000:]}")
        return ns.http("GET", "http://127.0.0.1:8000/health")[0] == 200

    try:
        wait_for(healthy, SERVICE_TIMEOUT_S, f"the service did not answer /health:\n{log.read_text()[-3000:]}", 3)
    except BaseException:
        print(log.read_text()[-5000:])
        raise
    print(f"serve run answered /health after {time.monotonic() - started:.0f} s")
    yield process


# --- the flows, in the order a reader meets them ----------------------------------------------------------


def address_file(ns: Namespace) -> Path:
    return ns.root / "tmp" / "ray" / "ray_current_cluster"


def gcs_servers(ns: Namespace) -> int:
    """How many GCS processes (one per Ray) run in the namespace."""
    count = 0
    for pid in ns.processes():
        try:
            count += Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"gcs_server")
        except OSError:
            pass
    return count


@pytest.mark.slow
def test_a_plain_serve_run_would_join_the_stale_address(ns):
    """The set-up reproduces item 10: plain `serve run` tries the dead recorded GCS and does not serve."""
    log = ns.root / "plain-serve-run.log"
    process = ns.start("serve run serve_config.yaml", log)
    try:
        wait_for(lambda: f"Connecting to existing Ray cluster at address: {STALE_ADDRESS}" in log.read_text(), 120,
                 "serve run did not read the stale address")
        assert process.poll() is None and ns.http("GET", "http://127.0.0.1:8000/health")[0] != 200
    finally:
        for pid in session_pids(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.wait(30)


@pytest.mark.slow
def test_the_readme_run_command_serves_despite_a_stale_address(ns, service):
    log = (ns.root / "serve-run.log").read_text()
    assert "Connecting to existing Ray cluster" not in log and "Started a local Ray instance" in log
    assert "http://127.0.0.1:8265" in log  # the dashboard address it prints
    status, body = ns.http("GET", "http://127.0.0.1:8000/health")
    assert status == 200 and json.loads(body)["status"] == "healthy"
    # the stale address was replaced by the live one, where Ray's job supervisor will look for it
    recorded = address_file(ns).read_text()
    assert recorded != STALE_ADDRESS and ns.port_open(int(recorded.rsplit(":", 1)[1])) and gcs_servers(ns) == 1


@pytest.mark.slow
def test_the_dashboard_token_as_the_readme_says(ns, service):
    """Item 4: the dashboard asks for a token; `ray get-auth-token` prints the one it accepts."""
    blocks = [b for b in fenced(readme_section("## Run the service"), "console") if "ray get-auth-token" in b]
    assert len(blocks) == 1
    printed = ns.run(literal(blocks[0], ns), timeout=120).stdout
    token = printed.splitlines()[0].strip()
    assert re.fullmatch(r"[0-9a-f]{32,}", token), printed
    assert json.loads(ns.http("GET", "http://127.0.0.1:8265/api/authentication_mode")[1]) == {
        "authentication_mode": "token"}
    assert ns.http("GET", "http://127.0.0.1:8265/api/version")[0] == 401  # what the page sees without it
    assert ns.http("POST", "http://127.0.0.1:8265/api/authenticate", token)[0] == 200  # what its prompt does
    assert token == (ns.root / "home" / ".ray" / "auth_token").read_text().strip()


def finished_sweep(job_log: str, output: Path) -> dict:
    """The job's closing JSON line, after checking that its output holds the whole sweep."""
    summary = json.loads((output / "summary.json").read_text())
    assert summary.get("complete") is True, summary
    assert len(list((output / "shards").glob("shard-*.parquet"))) == 4
    lines = [line for line in job_log.splitlines() if line.startswith('{"event": "sweep_finished"')]
    assert len(lines) == 1, job_log[-3000:]
    return json.loads(lines[0])


def head_ports(start_block: str) -> list[int]:
    return [int(p) for p in re.findall(r"--(?:port|dashboard-port|dashboard-agent-listen-port|"
                                       r"ray-client-server-port)=(\d+)", start_block)]


@pytest.fixture(scope="module")
def own_head(ns: Namespace, service) -> Iterator[subprocess.Popen]:
    """The README's "head of its own", started as written beside the service, its dashboard answering."""
    start = fenced(subsection("### On a Ray head of its own"), "bash")[0]
    log = ns.root / "head.log"
    head = ns.start(literal(start, ns), log)
    try:
        token = (ns.root / "home" / ".ray" / "auth_token").read_text().strip()
        port = re.search(r"--dashboard-port=(\d+)", start).group(1)
        wait_for(lambda: head.poll() is None and ns.http("GET", f"http://127.0.0.1:{port}/api/version", token)[0]
                 == 200, 180, f"the head's dashboard did not answer:\n{log.read_text()[-3000:]}", 2)
        yield head
    finally:
        if head.poll() is None:
            ctrl_c(head, 120)


@pytest.mark.slow
def test_the_readme_head_of_its_own_runs_a_sweep_beside_the_service(ns, own_head):
    """Item 1: a head with every fixed port moved runs beside the service and takes the sweep."""
    submit = fenced(subsection("### On a Ray head of its own"), "bash")[1]
    started = time.monotonic()
    # its own output (not the other test's, which would be resumed with nothing to do)
    result = ns.run(literal(submit, ns, sweeps="sweeps-head"), timeout=800)
    print(f"sweep on a head of its own: {time.monotonic() - started:.0f} s")
    assert finished_sweep(result.stdout, ns.root / "sweeps-head" / "small")["maps_run"] == 200


@pytest.mark.slow
def test_the_readme_sweep_on_the_service_ray_with_another_ray_on_the_machine(ns, service, own_head):
    """Item 1: the sweep section's commands, with the service up and a second Ray running (the case in which
    Ray's job supervisor gave a `serve run --address=local` Ray's jobs the recorded or any address), submit
    to the service's Ray and finish."""
    assert gcs_servers(ns) == 2
    blocks = fenced(subsection(SERVICE_SWEEP), "bash")
    assert len(blocks) == 1
    started = time.monotonic()
    result = ns.run(literal(blocks[0], ns), timeout=800)
    print(f"sweep on the service's Ray: {time.monotonic() - started:.0f} s")
    assert "raysubmit_" in result.stdout + result.stderr
    assert finished_sweep(result.stdout, ns.root / "sweeps" / "small")["maps_run"] == 200
    assert ns.http("GET", "http://127.0.0.1:8000/health")[0] == 200


@pytest.mark.slow
def test_ctrl_c_stops_the_head_and_leaves_nothing(ns, service, own_head):
    """Item 2: Ctrl-C in the head's terminal stops every process it started and frees its ports."""
    ports = head_ports(fenced(subsection("### On a Ray head of its own"), "bash")[0])
    assert len(ports) == 4 and all(ns.port_open(port) for port in ports[:2])  # GCS and dashboard were up
    assert session_pids(own_head.pid), "the head runs in the session it was started in"
    ctrl_c(own_head, 120)
    wait_for(lambda: not session_pids(own_head.pid), 60, "processes of the head outlived Ctrl-C")
    assert not [port for port in ports if ns.port_open(port)]
    assert ns.http("GET", "http://127.0.0.1:8000/health")[0] == 200  # the service is untouched


@pytest.mark.slow
def test_ctrl_c_stops_the_service_and_its_ray_leaving_nothing(ns, service):
    """Item 2 for the service: Ctrl-C in its terminal ends Serve and the local Ray it started, and the
    address it recorded goes with them."""
    ctrl_c(service, 120)
    wait_for(lambda: not ns.processes(), 60, "processes outlived lensing-serve's Ctrl-C")
    assert not ns.port_open(8000) and not ns.port_open(8265)
    assert not address_file(ns).exists()


@pytest.mark.slow
def test_the_readme_sweep_without_the_service(ns):
    """With the service stopped and a stale address recorded again, `RAY_ADDRESS=local python -m
    cluster.sweep ...` runs on a throwaway Ray of its own and leaves nothing behind."""
    address_file(ns).write_text(STALE_ADDRESS)
    blocks = fenced(subsection("### Without the service"), "bash")
    assert len(blocks) == 1
    started = time.monotonic()
    result = ns.run(literal(blocks[0], ns, sweeps="sweeps-alone"), timeout=800)
    print(f"sweep without the service: {time.monotonic() - started:.0f} s")
    assert finished_sweep(result.stdout, ns.root / "sweeps-alone" / "small")["maps_run"] == 200
    wait_for(lambda: not ns.processes(), 60, "the throwaway Ray outlived the sweep")
