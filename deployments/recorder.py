"""Job records of one ingress replica: group commit to the job store, and lookups by id.

Every synthetic or inference request records its job before it is answered (so its id can be read at
once, from any replica). Sent one by one, those records cost a store call and a transaction each. Here
concurrent records share one call and one transaction (`grouping.GroupedCalls`, one write in flight): a
lone record is sent at once, records that arrive during a write go together in the next. Each caller
still waits for its own record to be committed.

While the store is unavailable, an inference's record is held here instead (at most `max_deferred`), so
/inference keeps answering (its answer carries the whole result); a background task writes the held
records once the store is back, and `job()` finds them here meanwhile. A synthetic job is never held:
its stored request is what a batch regenerates the map from, so its id must be in the store before it is
handed out; /synthetic answers 503 then. Held records are lost only if this replica dies before the store
comes back (docs/design.md section 10).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .grouping import GroupedCalls
from .http.errors import StoreUnavailable, UnknownId
from .store.client import StoreClient
from .store.database import iso

logger = logging.getLogger("ray.serve")

JobRow = tuple[str, str, dict, dict | None]  # job_id, kind, request, result
DEFERRABLE = frozenset({"inference"})
RETRY_S = 1.0


class JobRecorder:
    """`record(...)` returns once the job is committed (concurrent records share one store call), or, for an
    inference while the store is unavailable, held for later; `job(job_id)` reads one."""

    def __init__(self, store: StoreClient, max_batch: int = 256, max_deferred: int = 10000,
                 clock: Callable[[], float] = time.time) -> None:
        async def write(rows: list[JobRow]) -> list[None]:
            await store.record_jobs.remote(rows)
            return [None] * len(rows)

        self._store = store
        self._calls: GroupedCalls[JobRow, None] = GroupedCalls(write, max_batch, in_flight=1)
        self.max_deferred = max_deferred
        self._clock = clock
        self._deferred: dict[str, tuple[JobRow, float]] = {}  # job_id -> (row, time it was answered)
        self._writer: asyncio.Task | None = None

    async def record(self, job_id: str, kind: str, request: dict, result: dict | None) -> None:
        """Return once the job is committed (or held, see above); raises what the store raised."""
        row = (job_id, kind, request, result)
        try:
            await self._calls.submit(row)
        except StoreUnavailable:
            if kind not in DEFERRABLE or len(self._deferred) >= self.max_deferred:
                raise
            if not self._deferred:
                logger.warning("job store unavailable: inference records are held in this replica until it is back")
            self._deferred[job_id] = (row, self._clock())
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_deferred())

    @property
    def deferred(self) -> int:
        """Records held for the store."""
        return len(self._deferred)

    async def _write_deferred(self) -> None:
        while self._deferred:
            await asyncio.sleep(RETRY_S)
            rows = [row for row, _ in list(self._deferred.values())[:1000]]
            try:
                await self._store.record_jobs.remote(rows)
            except StoreUnavailable:
                continue
            except Exception:
                logger.exception("held job records not written; retrying")
                continue
            for job_id, *_ in rows:
                self._deferred.pop(job_id, None)
            if not self._deferred:
                logger.info("job store back: held inference records written")

    async def stop(self) -> None:
        """A last try to write held records at shutdown."""
        if self._writer is not None:
            self._writer.cancel()
        if self._deferred:
            try:
                await self._store.record_jobs.remote([row for row, _ in self._deferred.values()])
                self._deferred.clear()
            except StoreUnavailable:
                logger.error("job store unavailable at shutdown: %d held inference records are lost",
                             len(self._deferred))

    async def job(self, job_id: str) -> dict:
        """The API record of a job, or UnknownId (404)."""
        if job_id in self._deferred:
            (_, kind, request, result), answered = self._deferred[job_id]
            return {"job_id": job_id, "kind": kind, "status": "completed", "batch_id": None,
                    "created": iso(answered), "updated": iso(answered), "request": request, "result": result,
                    "error": None}
        record = await self._store.get_job.remote(job_id)
        if record is None:
            raise UnknownId(f"no job {job_id!r}")
        return record
