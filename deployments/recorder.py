"""Group commit of job records from one ingress replica to the job store.

Every synthetic or inference request records its job before it is answered (so its id can be read at
once, from any replica). Sent one by one, those records cost a store call and a SQLite transaction each.
Here concurrent records share one call and one transaction: a lone record is sent at once (no timer,
no added latency), and records that arrive while a write is in flight go together in the next one.
Each caller still waits for its own record to be committed.
"""

from __future__ import annotations

import asyncio

from ray.serve.handle import DeploymentHandle

JobRow = tuple[str, str, dict, dict | None]  # job_id, kind, request, result


class JobRecorder:
    def __init__(self, store: DeploymentHandle, max_batch: int = 256) -> None:
        self.store, self.max_batch = store, max_batch
        self._pending: list[tuple[JobRow, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def record(self, job_id: str, kind: str, request: dict, result: dict | None) -> None:
        """Return once the job is committed; raises what the store raised."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((job_id, kind, request, result), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                await self.store.record_jobs.remote([row for row, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
