"""Request counters of an ingress replica: to Prometheus at once, to the job store every `flush_s`.

The middleware reports every finished HTTP request (`record`); /api/v1/stats adds up what all replicas
flushed to the store. Counters that fail to reach the store are kept for the next flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from ray.serve.handle import DeploymentHandle

from .metrics import IngressMetrics

logger = logging.getLogger("ray.serve")


class RequestStats:
    """`record` each request; `start` the periodic flush in the app's lifespan, `stop` it (with a last
    flush) at its end."""

    def __init__(self, store: DeploymentHandle, flush_s: float) -> None:
        self.store, self.flush_s = store, flush_s
        self._metrics = IngressMetrics()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._flusher: asyncio.Task | None = None

    def record(self, endpoint: str, method: str, status: int, latency_ms: float,
               stages: dict[str, float] | None = None) -> None:
        """Middleware callback: one finished HTTP request and where its time went."""
        self._metrics.record(endpoint, method, status, latency_ms, stages or {})
        self._counts[(f"{method} {endpoint}", status)] += 1

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()

    async def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            await self.store.add_request_counts.remote([(e, s, n) for (e, s), n in counts.items()])
        except Exception:
            self._counts.update(counts)
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:
                logger.exception("request counters not flushed; retrying")
