"""`JobDatabase`: jobs, batches and request counters, on SQLite or PostgreSQL (docs/design.md section 10).

Plain Python (usable and testable without Ray); `deployment.JobStore` runs it as a Serve deployment. The
SQL is written once for both dialects (`?` marks, portable upserts); the backend (`sqlite.py`,
`postgres.py`) runs each call as one transaction and may run it again, so every method is safe to repeat:
a caller whose JobStore replica died mid-call retries it on another (`client.py`). Inserts ignore rows
that exist, updates are guarded by the state they change, and a request-counter flush carries an id
that is applied once.

Batches are leased: the runner that owns a batch renews `lease_until`; a batch whose lease expired (its
ingress replica died) is claimed by the next sweep of any runner and resumed from its unfinished items,
or marked failed after `max_attempts` claims. On PostgreSQL runners on different replicas claim at the
same time: each locks the rows it claims and skips rows another claim holds (`FOR UPDATE SKIP LOCKED`),
so a batch goes to one runner. An item is finished once: `finish_item` changes only an unfinished row
(the first result wins; a late duplicate is dropped). Items are jobs (kind "batch_item") whose input (a
synthetic spec with its seed, or an .npy map) is stored before the batch is acknowledged; they come and
go as typed `BatchItem`s. Lease times read an injected clock (`time.time` by default), so tests can move
time instead of sleeping past a TTL.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..batch_items import BatchItem, BatchOptions
from ..http.errors import StoreUnavailable
from .backend import Backend, Transaction, dialect_of, redact, sqlite_path
from .schema import migrate

logger = logging.getLogger("ray.serve")

ACTIVE = ("queued", "running")
FLUSH_MEMORY_S = 86400.0  # applied flush ids are kept a day: a retried flush comes within an outage
INSERT_ROWS = 200  # rows per multi-row INSERT (x 6 values: well inside SQLite's 32,766 parameters)


def iso(timestamp: float) -> str:
    """UTC ISO-8601 with a Z suffix."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(time.time())


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def open_backend(url: str, timeout_s: float = 10.0) -> Backend:
    """The backend of a store URL (docs: `backend.py`)."""
    if dialect_of(url) == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(sqlite_path(url), timeout_s=timeout_s)
    from .postgres import PostgresBackend

    return PostgresBackend(url, timeout_s=timeout_s)


class JobDatabase:
    """Jobs, batches and request counters in the store at `url` (a SQLite file is created with its
    folders; a PostgreSQL database must exist). The schema is created or migrated here; when the
    database cannot be reached yet, at the first call that reaches it."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time, timeout_s: float = 10.0) -> None:
        self.clock = clock
        self.url = redact(url)
        self.backend = open_backend(url, timeout_s)
        self.dialect = self.backend.dialect
        self._migrated = False
        try:
            self._migrate()
        except StoreUnavailable:
            logger.warning("job store %s not reachable at start; the schema is checked at the first call that "
                           "reaches it", self.url)

    def _migrate(self) -> None:
        found, now = self.backend.run(lambda tx: migrate(tx.rows, self.dialect, self.backend.tables(tx)))
        if found != now:
            logger.info("job store %s: schema version %d -> %d", self.url, found, now)
        self._migrated = True

    def _run(self, work: Callable[[Transaction], Any], transaction: bool = True) -> Any:
        if not self._migrated:
            self._migrate()
        return self.backend.run(work, transaction)

    def close(self) -> None:
        self.backend.close()

    # --- single jobs -----------------------------------------------------------------------------

    def record_jobs(self, jobs: Sequence[tuple[str, str, dict, dict | None]]) -> None:
        """Store finished synchronous jobs (job_id, kind, request, result) in one transaction."""
        now = self.clock()
        rows = [(job_id, kind, now, now, json.dumps(request), json.dumps(result) if result is not None else None)
                for job_id, kind, request, result in jobs]
        chunks = [rows[k:k + INSERT_ROWS] for k in range(0, len(rows), INSERT_ROWS)]

        def work(tx: Transaction) -> None:  # one INSERT statement per chunk: one round trip, one commit
            for chunk in chunks:
                tx.run("INSERT INTO jobs (job_id, kind, status, created, updated, request, result) VALUES "
                       + ", ".join(["(?, ?, 'completed', ?, ?, ?, ?)"] * len(chunk))
                       + " ON CONFLICT (job_id) DO NOTHING", [value for row in chunk for value in row])

        if chunks:
            self._run(work, transaction=len(chunks) > 1)

    def get_job(self, job_id: str) -> dict | None:
        """The API record of a job, or None."""
        row = self._run(lambda tx: tx.one(
            "SELECT job_id, kind, status, batch_id, created, updated, request, result, error FROM jobs"
            " WHERE job_id = ?", (job_id,)), transaction=False)
        if row is None:
            return None
        job_id, kind, status, batch_id, created, updated, request, result, error = row
        return {"job_id": job_id, "kind": kind, "status": status, "batch_id": batch_id, "created": iso(created),
                "updated": iso(updated), "request": _loads(request), "result": _loads(result), "error": error}

    def synthetic_requests(self, job_ids: Sequence[str]) -> dict[str, dict]:
        """job_id -> stored request of those `job_ids` that are synthetic jobs."""
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        rows = self._run(lambda tx: tx.rows(
            f"SELECT job_id, request FROM jobs WHERE kind = 'synthetic' AND job_id IN ({marks})", list(job_ids)),
            transaction=False)
        return {job_id: json.loads(request) for job_id, request in rows}

    # --- batches ---------------------------------------------------------------------------------

    def create_batch(self, batch_id: str, items: Sequence[BatchItem], options: BatchOptions, owner: str,
                     ttl: float) -> None:
        """Persist a batch and its items, leased to `owner` (a repeated call finds it and changes nothing)."""
        now = self.clock()
        rows = [(item.job_id, batch_id, item.index, item.source, now, now, json.dumps(item.request_json()),
                 item.input) for item in items]

        def work(tx: Transaction) -> None:
            created = tx.run(
                "INSERT INTO batches (batch_id, status, total, created, updated, owner, lease_until, attempts, options)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (batch_id) DO NOTHING",
                (batch_id, len(items), now, now, owner, now + ttl, json.dumps(options.to_stored())))
            if created:
                tx.run_many(
                    "INSERT INTO jobs (job_id, kind, status, batch_id, batch_index, source, created, updated, request,"
                    " input) VALUES (?, 'batch_item', 'queued', ?, ?, ?, ?, ?, ?, ?)", rows)

        self._run(work)

    def claim_orphans(self, owner: str, ttl: float, max_attempts: int) -> list[str]:
        """Lease unfinished batches whose lease expired to `owner`; fail those claimed too often.

        Returns every unfinished batch `owner` holds afterwards: those just claimed, then those it held
        already (so a claim whose answer was lost is picked up at the next sweep; a runner skips the
        batches it runs)."""
        now = self.clock()

        def work(tx: Transaction) -> list[str]:
            claimed = []
            rows = tx.rows("SELECT batch_id, attempts FROM batches WHERE status IN ('queued', 'running')"
                           " AND lease_until < ? ORDER BY batch_id" + self.backend.claim_lock, (now,))
            for batch_id, attempts in rows:
                if attempts >= max_attempts:
                    self._fail_batch(tx, batch_id, f"abandoned: its runner was lost {attempts} times", now)
                else:
                    tx.run("UPDATE batches SET owner = ?, lease_until = ?, attempts = attempts + 1, updated = ?"
                           " WHERE batch_id = ?", (owner, now + ttl, now, batch_id))
                    claimed.append(batch_id)
            held = tx.rows("SELECT batch_id FROM batches WHERE owner = ? AND status IN ('queued', 'running')"
                           " AND lease_until >= ? ORDER BY batch_id", (owner, now))
            return claimed + [batch_id for (batch_id,) in held if batch_id not in claimed]

        return self._run(work)

    def renew(self, owner: str, batch_ids: Sequence[str], ttl: float) -> list[str]:
        """Extend the leases `owner` still holds; returns those batch ids."""
        if not batch_ids:
            return []
        marks = ",".join("?" * len(batch_ids))
        rows = self._run(lambda tx: tx.rows(
            f"UPDATE batches SET lease_until = ? WHERE owner = ? AND status IN ('queued', 'running')"
            f" AND batch_id IN ({marks}) RETURNING batch_id", (self.clock() + ttl, owner, *batch_ids)),
            transaction=False)
        return sorted(batch_id for (batch_id,) in rows)

    def release(self, owner: str) -> None:
        """Hand back `owner`'s leases at a graceful shutdown; the handover does not count as an attempt."""
        self._run(lambda tx: tx.run(
            "UPDATE batches SET lease_until = 0, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
            " WHERE owner = ? AND status IN ('queued', 'running')", (owner,)), transaction=False)

    def pending_items(self, batch_id: str) -> tuple[BatchOptions, list[BatchItem]]:
        """(batch options, its unfinished items in order); marks a queued batch running."""
        def work(tx: Transaction) -> tuple[tuple | None, list[tuple]]:
            tx.run("UPDATE batches SET status = 'running', updated = ? WHERE batch_id = ? AND status = 'queued'",
                   (self.clock(), batch_id))
            options = tx.one("SELECT options FROM batches WHERE batch_id = ?", (batch_id,))
            rows = tx.rows("SELECT job_id, batch_index, source, request, input FROM jobs WHERE batch_id = ?"
                           " AND status IN ('queued', 'running') ORDER BY batch_index", (batch_id,))
            return options, rows

        options, rows = self._run(work)
        if options is None:
            raise KeyError(f"no batch {batch_id!r}")
        items = [BatchItem.from_stored(j, i, s, json.loads(r), bytes(b) if b is not None else None)
                 for j, i, s, r, b in rows]
        return BatchOptions.from_stored(json.loads(options[0])), items

    def start_item(self, job_id: str) -> None:
        self.start_items([job_id])

    def start_items(self, job_ids: Sequence[str]) -> None:
        """Mark queued items running (one statement)."""
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            self._run(lambda tx: tx.run(f"UPDATE jobs SET status = 'running', updated = ? WHERE job_id IN ({marks})"
                                        " AND status = 'queued'", (self.clock(), *job_ids)), transaction=False)

    def finish_item(self, job_id: str, result: dict | None = None, error: str | None = None) -> bool:
        """Record an item's result (or error) once; its stored input is dropped. False when the item was
        finished already (by this call, repeated, or by another runner): the first result stands."""
        return self.finish_items([(job_id, result, error)])[0]

    def finish_items(self, finished: Sequence[tuple[str, dict | None, str | None]]) -> list[bool]:
        """`finish_item` for many (job_id, result, error) in one transaction (one commit); whether each recorded."""
        now = self.clock()
        rows = [(job_id, "failed" if error is not None else "completed",
                 json.dumps(result) if result is not None else None, error) for job_id, result, error in finished]
        chunks = [rows[k:k + INSERT_ROWS] for k in range(0, len(rows), INSERT_ROWS)]

        def work(tx: Transaction) -> set[str]:  # one UPDATE per chunk, from a VALUES list (columnN in both dialects)
            recorded: set[str] = set()
            for chunk in chunks:
                recorded.update(job_id for (job_id,) in tx.rows(
                    "UPDATE jobs SET status = v.column2, result = v.column3, error = v.column4, input = NULL,"
                    " updated = ? FROM (VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(chunk)) + ") AS v"
                    " WHERE jobs.job_id = v.column1 AND jobs.status IN ('queued', 'running') RETURNING jobs.job_id",
                    [now, *(value for row in chunk for value in row)]))
            return recorded

        recorded = self._run(work, transaction=len(chunks) > 1) if chunks else set()
        return [job_id in recorded for job_id, *_ in rows]

    def finalize_batch(self, batch_id: str) -> str:
        """Close a batch whose items are all finished: 'failed' if every item failed, else 'completed'."""
        now = self.clock()

        def work(tx: Transaction) -> str:
            counts = dict(tx.rows("SELECT status, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY status",
                                  (batch_id,)))
            if counts.get("queued", 0) + counts.get("running", 0):
                return "running"
            failed, total = counts.get("failed", 0), sum(counts.values())
            status = "failed" if failed == total else "completed"
            error = f"{failed} of {total} items failed" if failed else None
            tx.run("UPDATE batches SET status = ?, error = ?, owner = NULL, updated = ? WHERE batch_id = ?"
                   " AND status IN ('queued', 'running')", (status, error, now, batch_id))
            return status

        return self._run(work)

    @staticmethod
    def _fail_batch(tx: Transaction, batch_id: str, reason: str, now: float) -> None:
        tx.run("UPDATE batches SET status = 'failed', error = ?, owner = NULL, updated = ? WHERE batch_id = ?",
               (reason, now, batch_id))
        tx.run("UPDATE jobs SET status = 'failed', error = ?, input = NULL, updated = ? WHERE batch_id = ?"
               " AND status IN ('queued', 'running')", (reason, now, batch_id))

    def batch_status(self, batch_id: str) -> dict | None:
        """The API status of a batch (status, progress, counts, per-item results), or None."""
        def work(tx: Transaction) -> tuple[tuple | None, list[tuple]]:
            batch = tx.one("SELECT status, total, created, updated, error FROM batches WHERE batch_id = ?",
                           (batch_id,))
            if batch is None:
                return None, []
            return batch, tx.rows("SELECT batch_index, job_id, source, status, result, error FROM jobs"
                                  " WHERE batch_id = ? ORDER BY batch_index", (batch_id,))

        batch, rows = self._run(work, transaction=False)
        if batch is None:
            return None
        status, total, created, updated, error = batch
        results = [{"index": i, "job_id": j, "source": s, "status": st, "result": _loads(r), "error": e}
                   for i, j, s, st, r, e in rows]
        completed = sum(r["status"] == "completed" for r in results)
        failed = sum(r["status"] == "failed" for r in results)
        return {"batch_id": batch_id, "status": status, "progress": round(100.0 * (completed + failed) / total, 1),
                "total": total, "completed": completed, "failed": failed, "results": results, "error": error,
                "created": iso(created), "updated": iso(updated)}

    # --- statistics ------------------------------------------------------------------------------

    def add_request_counts(self, counts: Sequence[tuple[str, int, int]], flush_id: str | None = None) -> bool:
        """Add (endpoint, status code, n) request counts. With a `flush_id`, a repeated call adds nothing
        (returns False): a flush whose answer was lost can be sent again."""
        now = self.clock()
        rows = sorted(counts)  # one lock order for every replica's upserts: no deadlock on PostgreSQL

        def work(tx: Transaction) -> bool:
            if flush_id is not None:
                tx.run("DELETE FROM request_flushes WHERE applied < ?", (now - FLUSH_MEMORY_S,))
                if not tx.run("INSERT INTO request_flushes (flush_id, applied) VALUES (?, ?)"
                              " ON CONFLICT (flush_id) DO NOTHING", (flush_id, now)):
                    return False
            tx.run_many("INSERT INTO request_counts (endpoint, status, count) VALUES (?, ?, ?) ON CONFLICT"
                        " (endpoint, status) DO UPDATE SET count = request_counts.count + excluded.count", rows)
            return True

        return self._run(work)

    def stats(self) -> dict:
        """Job and batch counts by state, and request counts by endpoint and status code (one snapshot)."""
        rows = self._run(lambda tx: tx.rows(
            "SELECT 'job', status, 0, COUNT(*) FROM jobs GROUP BY status"
            " UNION ALL SELECT 'batch', status, 0, COUNT(*) FROM batches GROUP BY status"
            " UNION ALL SELECT 'request', endpoint, status, count FROM request_counts"), transaction=False)
        jobs: dict[str, int] = {}
        batches: dict[str, int] = {}
        requests: dict[str, dict[str, int]] = {}
        for table, key, code, count in rows:
            if table == "job":
                jobs[key] = count
            elif table == "batch":
                batches[key] = count
            else:
                requests.setdefault(key, {})[str(code)] = count
        return {
            "total_jobs": sum(jobs.values()),
            "active_jobs": sum(jobs.get(s, 0) for s in ACTIVE),
            "completed_jobs": jobs.get("completed", 0),
            "failed_jobs": jobs.get("failed", 0),
            "total_batches": sum(batches.values()),
            "active_batches": sum(batches.get(s, 0) for s in ACTIVE),
            "requests": requests,
        }
