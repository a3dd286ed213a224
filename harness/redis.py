"""A private Redis server for tests and benchmarks: a free port, its own temp dir, stopped by its pid.

`redis_server()` runs Debian's `redis-server` (`apt-get install redis-server`; the packaged service is not
used) in the foreground as a child process, bound to 127.0.0.1, without persistence. `stop()` ends it
(SIGTERM to that one process), `start()` starts it again on the same port (an outage); on exit it is
stopped even when the test failed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.ray_head import free_port, stop_process


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():  # PATH without /usr/bin (a bare CI env)
        found = "/usr/bin/redis-server"
    if found is None:
        raise FileNotFoundError("redis-server not found: apt-get install -y redis-server")
    return found


def ping(port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    root: Path
    port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        command = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                   "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                   "--logfile", str(self.root / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.process.poll() is not None:
                log = (self.root / "redis.log").read_text()[-2000:] if (self.root / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=30)
            self.process = None


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A fresh Redis on a free port, started; stopped and its directory removed on exit."""
    server = RedisServer(Path(tempfile.mkdtemp(prefix="lsredis-", dir="/tmp")), free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
