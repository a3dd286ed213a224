"""Job records of one ingress replica: group commit to the job store, and lookups by id.

Every synthetic or inference request records its job before it is answered (so its id can be read at
once, from any replica). Sent one by one, those records cost a store call and a SQLite transaction each.
Here concurrent records share one call and one transaction (`grouping.GroupedCalls`, one write in
flight): a lone record is sent at once, records that arrive during a write go together in the next.
Each caller still waits for its own record to be committed.
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from .grouping import GroupedCalls
from .http.errors import UnknownId

JobRow = tuple[str, str, dict, dict | None]  # job_id, kind, request, result


class JobRecorder:
    """`record(...)` returns once the job is committed (concurrent records share one store call);
    `job(job_id)` reads one."""

    def __init__(self, store: DeploymentHandle, max_batch: int = 256) -> None:
        async def write(rows: list[JobRow]) -> list[None]:
            await store.record_jobs.remote(rows)
            return [None] * len(rows)

        self._store = store
        self._calls: GroupedCalls[JobRow, None] = GroupedCalls(write, max_batch, in_flight=1)

    async def record(self, job_id: str, kind: str, request: dict, result: dict | None) -> None:
        """Return once the job is committed; raises what the store raised."""
        await self._calls.submit((job_id, kind, request, result))

    async def job(self, job_id: str) -> dict:
        """The API record of a job, or UnknownId (404)."""
        record = await self._store.get_job.remote(job_id)
        if record is None:
            raise UnknownId(f"no job {job_id!r}")
        return record
