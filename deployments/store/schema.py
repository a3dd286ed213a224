"""The job store's schema, versioned, and the migrations that bring any earlier version up to date.

The version lives in a one-row table `schema_version`. Version 1 is the schema of the SQLite store before
versioning (jobs, batches, request_counts; a store written then has no `schema_version` table and is
recognised by its `jobs` table). Version 2 adds `schema_version` and `request_flushes`, the ids of applied
request-counter flushes, which make a retried flush count once. Every step is idempotent SQL (IF NOT
EXISTS), written once with the two dialects' type names filled in: the stored formats (JSON text, .npy
bytes, epoch seconds) are the same in both. `migrate` runs in one transaction at the start of every
JobStore replica; PostgreSQL replicas starting together take an advisory lock first, so one migrates
and the others find the work done. A store of a newer version than this code is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SCHEMA_VERSION = 2
TYPES = {"sqlite": {"real": "REAL", "blob": "BLOB"}, "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA"}}
MIGRATION_LOCK = 72_017_310  # pg_advisory_xact_lock key: "the lensing store's schema"

# Step k takes a store from version k - 1 to version k.
STEPS = {
    1: """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    batch_id TEXT,
    batch_index INTEGER,
    source TEXT,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    request TEXT NOT NULL,
    input {blob},
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id, batch_index);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    owner TEXT,
    lease_until {real} NOT NULL,
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
""",
    2: """
CREATE TABLE IF NOT EXISTS request_flushes (
    flush_id TEXT PRIMARY KEY,
    applied {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS request_flushes_by_time ON request_flushes (applied);
""",
}


def statements(dialect: str, step: int) -> list[str]:
    """The DDL statements of one step in `dialect`."""
    return [s.strip() for s in STEPS[step].format(**TYPES[dialect]).split(";") if s.strip()]


Execute = Callable[[str, tuple], list[Any]]  # (sql with ? marks, params) -> rows


def migrate(execute: Execute, dialect: str, tables: set[str]) -> tuple[int, int]:
    """Bring the store to SCHEMA_VERSION inside the caller's transaction; returns (found, now) versions.

    `tables` are the tables that exist (read by the caller in its dialect's catalogue)."""
    if dialect == "postgresql":
        execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})", ())
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", ())
    rows = execute("SELECT version FROM schema_version", ())
    if rows:
        found = int(rows[0][0])
    else:
        found = 1 if "jobs" in tables else 0  # an unversioned store is the schema before versioning
    if found > SCHEMA_VERSION:
        raise RuntimeError(f"the job store has schema version {found}, newer than this code's {SCHEMA_VERSION}: "
                           "run a newer Lensing Serve, or a fresh store_url")
    for step in range(found + 1, SCHEMA_VERSION + 1):
        for statement in statements(dialect, step):
            execute(statement, ())
    if rows:
        execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    else:
        execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    return found, SCHEMA_VERSION
