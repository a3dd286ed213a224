"""Job records of one ingress replica: written behind the response, in groups, and read back by id.

Every synthetic and inference request gets a job id and a record in the job store. Waiting for the store
before answering would put a store round trip (a call between deployments: milliseconds) on every
request's path, so `record` only queues the record and returns; one writer task sends the queue to the
store in groups (one call and one transaction per group). The writer waits `group_window_s` after the
first record of a group before it sends: a call between deployments costs milliseconds of the replica's
CPU, and at low load it would otherwise land on the next request's path once per request. The replica
reads its own queued records back (`job`, `synthetic_requests`), so a client that asks this replica at
once finds its job; another replica finds it once the write lands, some 50 ms later. Writes are
idempotent (a record already stored is left as it is), so a failed write keeps its records queued and is
simply sent again.

While the store is unavailable (the last write raised StoreUnavailable), inference records are still
queued (at most `max_pending`), so /inference keeps answering with its whole result; a synthetic job is
refused (503) instead, because its stored request is what a batch regenerates the map from: its id must
not be handed out while it cannot be stored. Queued records are lost only if this replica dies before the
store has them (docs/design.md section 10).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .http.errors import StoreUnavailable, UnknownId
from .store.client import StoreClient
from .store.database import iso

logger = logging.getLogger("ray.serve")

JobRow = tuple[str, str, dict, dict | None]  # job_id, kind, request, result
DEFERRABLE = frozenset({"inference", "inference_stack"})  # kinds queued while the store is unavailable
MAX_GROUP = 256
GROUP_WINDOW_S = 0.05  # how long the writer collects records before a store call
RETRY_PAUSE_S = (0.1, 1.0)  # first and longest pause between failed writes


class JobRecorder:
    """`record(...)` queues a job record (returns at once); `job(id)` reads one; `flush()` at shutdown."""

    def __init__(self, store: StoreClient, max_pending: int = 10_000, clock: Callable[[], float] = time.time,
                 group_window_s: float = GROUP_WINDOW_S) -> None:
        self._store, self.max_pending, self._clock, self.group_window_s = store, max_pending, clock, group_window_s
        self._pending: dict[str, tuple[JobRow, float]] = {}  # job_id -> (row, time answered), in order
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self.store_down = False

    def record(self, job_id: str, kind: str, request: dict, result: dict | None) -> None:
        """Queue a record for the store; StoreUnavailable (503) for a synthetic job while the store is down,
        and for any job while the queue is full."""
        if (self.store_down and kind not in DEFERRABLE) or len(self._pending) >= self.max_pending:
            raise StoreUnavailable("the job store is unavailable; retry shortly")
        self._pending[job_id] = ((job_id, kind, request, result), self._clock())
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever())
        self._wake.set()

    @property
    def pending(self) -> int:
        """Records queued for the store."""
        return len(self._pending)

    async def job(self, job_id: str) -> dict:
        """The API record of a job (a queued one from this replica's queue), or UnknownId (404)."""
        if (queued := self._pending.get(job_id)) is not None:
            (_, kind, request, result), at = queued
            return {"job_id": job_id, "kind": kind, "status": "completed", "batch_id": None, "created": iso(at),
                    "updated": iso(at), "request": request, "result": result, "error": None}
        record = await self._store.get_job.remote(job_id)
        if record is None:
            raise UnknownId(f"no job {job_id!r}")
        return record

    async def synthetic_requests(self, job_ids: list[str]) -> dict[str, dict]:
        """job_id -> stored request of those `job_ids` that are synthetic jobs (queued ones included)."""
        queued = {job_id: entry[0][2] for job_id in job_ids
                  if (entry := self._pending.get(job_id)) is not None and entry[0][1] == "synthetic"}
        rest = [job_id for job_id in job_ids if job_id not in queued]
        return queued | (await self._store.synthetic_requests.remote(rest) if rest else {})

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (at shutdown); gives up after `timeout_s`, logging how many records are lost."""
        if self._writer is not None:
            self._writer.cancel()
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            try:
                await self._write_group()
            except Exception:  # noqa: BLE001 - the store is down; try until the deadline
                await asyncio.sleep(RETRY_PAUSE_S[0])
        if self._pending:
            logger.error("%d job records could not be written to the store before shutdown", len(self._pending))

    async def _write_group(self) -> None:
        group = [row for row, _ in list(self._pending.values())[:MAX_GROUP]]
        await self._store.record_jobs.remote(group)
        for job_id, *_ in group:
            self._pending.pop(job_id, None)

    async def _write_forever(self) -> None:
        pause = RETRY_PAUSE_S[0]
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.group_window_s)
            self._wake.clear()
            while self._pending:
                try:
                    await self._write_group()
                except StoreUnavailable:
                    if not self.store_down:
                        logger.warning("job store unavailable: inference records are queued here, synthetic "
                                       "jobs refused, until it is back")
                    self.store_down = True
                except Exception:
                    logger.exception("job records not written (%d queued); retrying", len(self._pending))
                else:
                    if self.store_down:
                        logger.info("job store back: queued job records written")
                    self.store_down, pause = False, RETRY_PAUSE_S[0]
                    continue
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_PAUSE_S[1])
