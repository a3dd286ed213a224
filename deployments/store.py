"""The job store: jobs, batches and request counters in one SQLite file (docs/design.md section 10).

`JobDatabase` is plain Python (usable and testable without Ray); `JobStore` runs it as a one-replica
Serve deployment, so every ingress replica sees the same jobs and a restarted ingress finds them again.
SQLite in WAL mode with synchronous=NORMAL: a commit survives the death of any process (the store's
included); only an OS crash can lose the last commits. One connection, guarded by a lock, because Serve
runs sync methods in a thread pool. Multi-step updates run in `BEGIN IMMEDIATE` transactions, so even
two store replicas on one file would not hand the same batch to two runners.

Batches are leased: the runner that owns a batch renews `lease_until`; a batch whose lease expired
(its ingress replica died) is claimed by the next sweep of any runner and resumed from its unfinished
items, or marked failed after `max_attempts` claims. Items are jobs (kind "batch_item") whose input
(a synthetic spec with its seed, or an .npy map) is stored before the batch is acknowledged; they come
and go as typed `BatchItem`s. Lease times read an injected clock (`time.time` by default), so tests
can move time instead of sleeping past a TTL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray import serve

from .batch_items import BatchItem, BatchOptions
from .settings import JOB_STORE_REPLICA

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    batch_id TEXT,
    batch_index INTEGER,
    source TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    request TEXT NOT NULL,
    input BLOB,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id, batch_index);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL,
    attempts INTEGER NOT NULL,
    options TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE TABLE IF NOT EXISTS request_counts (
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (endpoint, status)
);
"""

ACTIVE = ("queued", "running")


def iso(timestamp: float) -> str:
    """UTC ISO-8601 with a Z suffix."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(time.time())


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class JobDatabase:
    """Jobs, batches and request counters in a SQLite file at `path` (created with its folders)."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- single jobs -----------------------------------------------------------------------------

    def record_jobs(self, jobs: Sequence[tuple[str, str, dict, dict | None]]) -> None:
        """Store finished synchronous jobs (job_id, kind, request, result) in one transaction; a job already
        stored is left as it is, so a write repeated after a lost answer is harmless."""
        now = self.clock()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO jobs (job_id, kind, status, created, updated, request, result)"
                " VALUES (?, ?, 'completed', ?, ?, ?, ?)",
                [(job_id, kind, now, now, json.dumps(request), json.dumps(result) if result is not None else None)
                 for job_id, kind, request, result in jobs],
            )

    def get_job(self, job_id: str) -> dict | None:
        """The API record of a job, or None."""
        rows = self._query(
            "SELECT job_id, kind, status, batch_id, created, updated, request, result, error FROM jobs"
            " WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        job_id, kind, status, batch_id, created, updated, request, result, error = rows[0]
        return {"job_id": job_id, "kind": kind, "status": status, "batch_id": batch_id, "created": iso(created),
                "updated": iso(updated), "request": _loads(request), "result": _loads(result), "error": error}

    def synthetic_requests(self, job_ids: Sequence[str]) -> dict[str, dict]:
        """job_id -> stored request of those `job_ids` that are synthetic jobs."""
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        rows = self._query(f"SELECT job_id, request FROM jobs WHERE kind = 'synthetic' AND job_id IN ({marks})",
                           list(job_ids))
        return {job_id: json.loads(request) for job_id, request in rows}

    # --- batches ---------------------------------------------------------------------------------

    def create_batch(self, batch_id: str, items: Sequence[BatchItem], options: BatchOptions, owner: str,
                     ttl: float) -> None:
        """Persist a batch and its items, leased to `owner`."""
        now = self.clock()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO batches (batch_id, status, total, created, updated, owner, lease_until, attempts, options)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, 1, ?)",
                (batch_id, len(items), now, now, owner, now + ttl, json.dumps(options.to_stored())),
            )
            db.executemany(
                "INSERT INTO jobs (job_id, kind, status, batch_id, batch_index, source, created, updated, request,"
                " input) VALUES (?, 'batch_item', 'queued', ?, ?, ?, ?, ?, ?, ?)",
                [(item.job_id, batch_id, item.index, item.source, now, now, json.dumps(item.request_json()),
                  item.input) for item in items],
            )

    def claim_orphans(self, owner: str, ttl: float, max_attempts: int) -> list[str]:
        """Lease unfinished batches whose lease expired to `owner`; fail those claimed too often."""
        now = self.clock()
        claimed = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT batch_id, attempts FROM batches WHERE status IN ('queued', 'running') AND lease_until < ?",
                (now,)).fetchall()
            for batch_id, attempts in rows:
                if attempts >= max_attempts:
                    reason = f"abandoned: its runner was lost {attempts} times"
                    self._fail_batch(db, batch_id, reason, now)
                else:
                    db.execute("UPDATE batches SET owner = ?, lease_until = ?, attempts = attempts + 1, updated = ?"
                               " WHERE batch_id = ?", (owner, now + ttl, now, batch_id))
                    claimed.append(batch_id)
        return claimed

    def renew(self, owner: str, batch_ids: Sequence[str], ttl: float) -> list[str]:
        """Extend the leases `owner` still holds; returns those batch ids."""
        if not batch_ids:
            return []
        now = self.clock()
        marks = ",".join("?" * len(batch_ids))
        with self._transaction() as db:
            db.execute(f"UPDATE batches SET lease_until = ? WHERE owner = ? AND status IN ('queued', 'running')"
                       f" AND batch_id IN ({marks})", (now + ttl, owner, *batch_ids))
            rows = db.execute(f"SELECT batch_id FROM batches WHERE owner = ? AND status IN ('queued', 'running')"
                              f" AND batch_id IN ({marks})", (owner, *batch_ids)).fetchall()
        return [row[0] for row in rows]

    def release(self, owner: str) -> None:
        """Hand back `owner`'s leases at a graceful shutdown; the handover does not count as an attempt."""
        with self._transaction() as db:
            db.execute("UPDATE batches SET lease_until = 0, attempts = MAX(attempts - 1, 0) WHERE owner = ?"
                       " AND status IN ('queued', 'running')", (owner,))

    def pending_items(self, batch_id: str) -> tuple[BatchOptions, list[BatchItem]]:
        """(batch options, its unfinished items in order); marks a queued batch running."""
        with self._transaction() as db:
            db.execute("UPDATE batches SET status = 'running', updated = ? WHERE batch_id = ? AND status = 'queued'",
                       (self.clock(), batch_id))
            options = db.execute("SELECT options FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
            rows = db.execute(
                "SELECT job_id, batch_index, source, request, input FROM jobs WHERE batch_id = ?"
                " AND status IN ('queued', 'running') ORDER BY batch_index", (batch_id,)).fetchall()
        if options is None:
            raise KeyError(f"no batch {batch_id!r}")
        items = [BatchItem.from_stored(j, i, s, json.loads(r), b) for j, i, s, r, b in rows]
        return BatchOptions.from_stored(json.loads(options[0])), items

    def start_item(self, job_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET status = 'running', updated = ? WHERE job_id = ? AND status = 'queued'",
                       (self.clock(), job_id))

    def finish_item(self, job_id: str, result: dict | None = None, error: str | None = None) -> None:
        """Record an item's result (or error) once; its stored input is dropped."""
        status = "failed" if error is not None else "completed"
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, input = NULL, updated = ?"
                " WHERE job_id = ? AND status IN ('queued', 'running')",
                (status, json.dumps(result) if result is not None else None, error, self.clock(), job_id))

    def finalize_batch(self, batch_id: str) -> str:
        """Close a batch whose items are all finished: 'failed' if every item failed, else 'completed'."""
        now = self.clock()
        with self._transaction() as db:
            counts = dict(db.execute("SELECT status, COUNT(*) FROM jobs WHERE batch_id = ? GROUP BY status",
                                     (batch_id,)).fetchall())
            if counts.get("queued", 0) + counts.get("running", 0):
                return "running"
            failed, total = counts.get("failed", 0), sum(counts.values())
            status = "failed" if failed == total else "completed"
            error = f"{failed} of {total} items failed" if failed else None
            db.execute("UPDATE batches SET status = ?, error = ?, owner = NULL, updated = ? WHERE batch_id = ?"
                       " AND status IN ('queued', 'running')", (status, error, now, batch_id))
        return status

    @staticmethod
    def _fail_batch(db: sqlite3.Connection, batch_id: str, reason: str, now: float) -> None:
        db.execute("UPDATE batches SET status = 'failed', error = ?, owner = NULL, updated = ? WHERE batch_id = ?",
                   (reason, now, batch_id))
        db.execute("UPDATE jobs SET status = 'failed', error = ?, input = NULL, updated = ? WHERE batch_id = ?"
                   " AND status IN ('queued', 'running')", (reason, now, batch_id))

    def batch_status(self, batch_id: str) -> dict | None:
        """The API status of a batch (status, progress, counts, per-item results), or None."""
        with self._lock:
            batch = self._db.execute("SELECT status, total, created, updated, error FROM batches WHERE batch_id = ?",
                                     (batch_id,)).fetchone()
            if batch is None:
                return None
            rows = self._db.execute("SELECT batch_index, job_id, source, status, result, error FROM jobs"
                                    " WHERE batch_id = ? ORDER BY batch_index", (batch_id,)).fetchall()
        status, total, created, updated, error = batch
        results = [{"index": i, "job_id": j, "source": s, "status": st, "result": _loads(r), "error": e}
                   for i, j, s, st, r, e in rows]
        completed = sum(r["status"] == "completed" for r in results)
        failed = sum(r["status"] == "failed" for r in results)
        return {"batch_id": batch_id, "status": status, "progress": round(100.0 * (completed + failed) / total, 1),
                "total": total, "completed": completed, "failed": failed, "results": results, "error": error,
                "created": iso(created), "updated": iso(updated)}

    # --- statistics ------------------------------------------------------------------------------

    def add_request_counts(self, counts: Sequence[tuple[str, int, int]]) -> None:
        """Add (endpoint, status code, n) request counts."""
        with self._transaction() as db:
            db.executemany("INSERT INTO request_counts (endpoint, status, count) VALUES (?, ?, ?)"
                           " ON CONFLICT (endpoint, status) DO UPDATE SET count = count + excluded.count", counts)

    def stats(self) -> dict:
        """Job and batch counts by state, and request counts by endpoint and status code."""
        with self._lock:
            jobs = dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            batches = dict(self._db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())
            counts = self._db.execute("SELECT endpoint, status, count FROM request_counts").fetchall()
        requests: dict[str, dict[str, int]] = {}
        for endpoint, status, count in counts:
            requests.setdefault(endpoint, {})[str(status)] = count
        return {
            "total_jobs": sum(jobs.values()),
            "active_jobs": sum(jobs.get(s, 0) for s in ACTIVE),
            "completed_jobs": jobs.get("completed", 0),
            "failed_jobs": jobs.get("failed", 0),
            "total_batches": sum(batches.values()),
            "active_batches": sum(batches.get(s, 0) for s in ACTIVE),
            "requests": requests,
        }


@serve.deployment(**JOB_STORE_REPLICA.deployment_options(logging_config={"enable_access_log": False}))
class JobStore(JobDatabase):
    """The store as one Serve replica; place it where `store_path` is on persistent disk. No access log:
    batch runners call it every few seconds."""
