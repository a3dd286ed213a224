"""Request counters of an ingress replica: to Prometheus at once, to the job store every `flush_s`.

The middleware reports every finished HTTP request (`record`); /api/v1/stats adds up what all replicas
flushed to the store. Each flush carries an id, and counters that fail to reach the store are sent again
with the same id at the next flush, so a flush whose answer was lost (the store replica died after its
commit) is counted once. Requests counted meanwhile wait for the flush after it. While the store is
unavailable one line is logged when flushes start failing and one when they succeed again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter

from .http.errors import StoreUnavailable
from .metrics import IngressMetrics
from .store.client import StoreClient

logger = logging.getLogger("ray.serve")


class RequestStats:
    """`record` each request; `start` the periodic flush in the app's lifespan, `stop` it (with a last
    flush) at its end."""

    def __init__(self, store: StoreClient, flush_s: float) -> None:
        self.store, self.flush_s = store, flush_s
        self._metrics = IngressMetrics()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._unsent: tuple[str, Counter[tuple[str, int]]] | None = None  # (flush id, counts) being sent
        self._flusher: asyncio.Task | None = None
        self._failing = False

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
        try:
            await self.flush()
        except StoreUnavailable:
            logger.warning("job store unavailable at shutdown: this replica's last request counters are not stored")

    async def flush(self) -> None:
        """Send the counters not stored yet (a failed flush first, under its id); raises what the store raised."""
        while True:
            if self._unsent is None:
                if not self._counts:
                    return
                self._unsent, self._counts = (uuid.uuid4().hex, self._counts), Counter()
            flush_id, counts = self._unsent
            await self.store.add_request_counts.remote([(e, s, n) for (e, s), n in counts.items()], flush_id)
            self._unsent = None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except StoreUnavailable:
                if not self._failing:
                    logger.warning("request counters not flushed: the job store is unavailable; kept for later")
                self._failing = True
                continue
            except Exception:
                logger.exception("request counters not flushed; retrying")
                continue
            if self._failing:
                logger.info("request counters flushed again")
                self._failing = False
