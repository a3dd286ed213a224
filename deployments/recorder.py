"""Job records of one ingress replica: written behind the response, in groups, and read back by id.

Every synthetic and inference request gets a job id and a record in the job store. Waiting for the
store before answering would put a store round trip (a call between deployments: milliseconds) on every
request's path, so `record` only queues the record and returns; one writer task sends the queue to the
store in groups (one call and one transaction per group: under load the groups grow, a lone record leaves
at once). The replica reads its own queued records back (`job`), so a client that asks this replica
at once finds its job; another replica finds it once the write lands, a store round trip later.
A failed write keeps the records queued and retries with a growing pause, so a store restart loses
nothing; only the death of this replica loses the records still queued (the clients have their results).
Past `max_pending` queued records the store is considered unavailable and new records are refused (503).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray.serve.handle import DeploymentHandle

from .http.errors import Unavailable, UnknownId
from .store import iso

logger = logging.getLogger("ray.serve")

JobRow = tuple[str, str, dict, dict | None]  # job_id, kind, request, result
MAX_GROUP = 256
RETRY_PAUSE_S = (0.1, 5.0)  # first and longest pause between failed writes


class JobRecorder:
    """`record(...)` queues a job record (returns at once); `job(id)` reads one; `flush()` at shutdown."""

    def __init__(self, store: DeploymentHandle, max_pending: int = 100_000) -> None:
        self._store, self.max_pending = store, max_pending
        self._pending: dict[str, tuple[JobRow, float]] = {}  # job_id -> (row, time queued), in order
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None

    def record(self, job_id: str, kind: str, request: dict, result: dict | None) -> None:
        """Queue a record for the store (Unavailable when the queue is full: the store has been down long)."""
        if len(self._pending) >= self.max_pending:
            raise Unavailable("the job store is unavailable; retry shortly")
        self._pending[job_id] = ((job_id, kind, request, result), time.time())
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever())
        self._wake.set()

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
        queued = {job_id: row[2] for job_id in job_ids if (entry := self._pending.get(job_id)) is not None
                  for row in (entry[0],) if row[1] == "synthetic"}
        rest = [job_id for job_id in job_ids if job_id not in queued]
        return queued | (await self._store.synthetic_requests.remote(rest) if rest else {})

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (at shutdown); gives up after `timeout_s`, logging how many records are lost."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            try:
                await self._write_group()
            except Exception:  # noqa: BLE001 - the store is down; try until the deadline
                await asyncio.sleep(RETRY_PAUSE_S[0])
        if self._pending:
            logger.error("%d job records could not be written to the store before shutdown", len(self._pending))
        if self._writer is not None:
            self._writer.cancel()

    async def _write_group(self) -> None:
        group = [row for row, _ in list(self._pending.values())[:MAX_GROUP]]
        await self._store.record_jobs.remote(group)
        for job_id, *_ in group:
            self._pending.pop(job_id, None)

    async def _write_forever(self) -> None:
        pause = RETRY_PAUSE_S[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                try:
                    await self._write_group()
                    pause = RETRY_PAUSE_S[0]
                except Exception:
                    logger.warning("job records not written (%d queued); retrying in %.1f s", len(self._pending),
                                   pause, exc_info=True)
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, RETRY_PAUSE_S[1])
