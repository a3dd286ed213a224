"""A private PostgreSQL server for tests and benchmarks: a free port, its own temp dir, always stopped.

`postgres_server()` runs Debian's PostgreSQL binaries (`apt-get install postgresql`; the server itself is
not used, only its programs) as an unprivileged user, because the server refuses to run as root: the
`postgres` user the package creates, or `lensing-pg` (created with `useradd` when missing). Run as a
user other than root, everything runs as that user. The cluster listens on 127.0.0.1 and a socket in
its temp dir only, with password authentication over TCP (a random password, so the tests exercise a
URL with a secret in it, handed over through the environment). `stop()` is `pg_ctl stop -m fast`;
`start()` brings it back on the same port and data dir (an outage). On exit the server is stopped by
`pg_ctl`, else by the process id in `postmaster.pid`, even when the test failed.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.ray_head import free_port

FALLBACK_USER = "lensing-pg"
SUPERUSER = "lensing"
DATABASE = "lensing"


def bin_dir() -> Path:
    """The newest PostgreSQL server binaries: /usr/lib/postgresql/N/bin (Debian), else pg_ctl on PATH."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "pg_ctl").exists()]
    if found:
        return max(found, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install -y postgresql")
    return Path(pg_ctl).resolve().parent


def server_user() -> pwd.struct_passwd:
    """The unprivileged account that runs the server (the current one when that is not root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
                   check=True, capture_output=True)
    return pwd.getpwnam(FALLBACK_USER)


@dataclass
class PostgresServer:
    """A running private server: `url` (with the password) reaches its database over TCP."""

    root: Path
    port: int
    password: str
    user: pwd.struct_passwd = field(repr=False)
    bin: Path = field(repr=False)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C.UTF-8", "PGTZ": "UTC"}
        result = subprocess.run([*self._as_server_user(), str(self.bin / args[0]), *args[1:]], cwd=self.root,
                                env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout}{result.stderr}"
                               f"{self._log_tail()}")
        return result

    def _as_server_user(self) -> list[str]:
        """The prefix that drops root to the server's user: util-linux's `setpriv`, not subprocess's `user=`.

        With `user=` Python must fork() instead of vfork(), and fork() runs the atfork handlers of the gRPC
        library Ray loads into the test process; one of them, racing the child closing its fds, aborted
        initdb (-6, "epoll_wait error: Bad file descriptor") in a CI run. `setpriv` changes user after exec."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", "--"]

    def _log_tail(self) -> str:
        log = self.root / "server.log"
        return "\nserver log:\n" + log.read_text()[-2000:] if log.exists() else ""

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
                      "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        finally:
            pwfile.unlink()

    def start(self) -> None:
        """Start the server (again) on the same port and data dir; returns once it accepts connections."""
        options = {"port": str(self.port), "listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.root),
                   "max_connections": "100", "shared_buffers": "64MB"} | self.settings
        flags = " ".join(f"-c {key}={value}" for key, value in options.items())
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                  "-o", flags)

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: "fast" rolls back open transactions and disconnects every client."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir))

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def psql(self, sql: str) -> str:
        """Run SQL as the superuser over the socket; returns psql's unaligned output."""
        return self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER, "-d", DATABASE,
                         "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql).stdout

    def kill(self) -> None:
        """Stop the postmaster by the process id it recorded (when pg_ctl could not)."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and its children
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)


@contextmanager
def postgres_server(settings: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster with database `lensing`, started; stopped and deleted on exit.

    `settings` are server parameters (`-c key=value`), e.g. {"fsync": "off"} for throwaway unit tests."""
    root = Path(tempfile.mkdtemp(prefix="lspg-", dir="/tmp"))
    server = PostgresServer(root, free_port(), secrets.token_hex(12), server_user(), bin_dir(), settings or {})
    server._chown(root)
    try:
        server.init()
        server.start()
        server._run("createdb", "-h", str(root), "-p", str(server.port), "-U", SUPERUSER, DATABASE)
        yield server
    finally:
        if server.running():
            try:
                server.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                server.kill()
        shutil.rmtree(root, ignore_errors=True)
