"""Where a request's time goes inside the ingress: named stages, timed per request.

The middleware opens a record per HTTP request (`start`); code on the request's path adds stages
(`stage("pool")` around a call, or `add("model", ms)` for a time another deployment reported). When the
response starts, the middleware sends them to the client as a standard `Server-Timing` header (with
`ingress`, the whole time in the ingress) and to Prometheus (`lensing_stage_latency_ms{stage}`). A client
that measures its own latency learns the proxy's share by subtracting `ingress` (bench/http_load.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_stages: ContextVar[dict[str, float] | None] = ContextVar("lensing_stages", default=None)


def start() -> dict[str, float]:
    """A fresh stage record for the request being handled (the middleware calls this)."""
    stages: dict[str, float] = {}
    _stages.set(stages)
    return stages


def add(name: str, milliseconds: float) -> None:
    """Add a stage's time to the current request's record (no-op outside a request)."""
    stages = _stages.get()
    if stages is not None:
        stages[name] = stages.get(name, 0.0) + milliseconds


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage `name` of the current request."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(name, 1e3 * (time.perf_counter() - started))


def server_timing(stages: dict[str, float], ingress_ms: float) -> str:
    """The Server-Timing header value: `ingress;dur=6.10, pool;dur=4.02, ...` (milliseconds)."""
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in {"ingress": ingress_ms, **stages}.items())
