"""The job store on both backends, without Ray: every test that takes `store_url` runs on SQLite and on a
real PostgreSQL server (harness/postgres.py: Debian's binaries, a free port, a temp dir, stopped at the
end). The lease protocol, calls that are safe to repeat, the versioned schema (a store written before
versioning opens), concurrent runners on PostgreSQL (row locks, SKIP LOCKED, exactly-once completion), an
outage and a hung server (503, never a hang; recovery without reopening), store URLs and settings, the
ingress's StoreClient, and the ingress parts that must survive an outage (batch runner, job recorder,
request counters)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from ray.exceptions import ActorDiedError

from deployments.batch_items import BatchItem, BatchOptions
from deployments.batches import BatchRunner
from deployments.http.errors import StoreUnavailable
from deployments.recorder import JobRecorder
from deployments.request_stats import RequestStats
from deployments.settings import AppSettings, BatchJobSettings, store_url_of
from deployments.store import JobDatabase
from deployments.store.backend import dialect_of, redact, sqlite_path
from deployments.store.client import StoreClient
from deployments.store.schema import SCHEMA_VERSION
from harness.postgres import PostgresServer, postgres_server

OPTIONS = BatchOptions(mc_samples=10, refine=False, base_seed=0)


def item(job_id: str, index: int = 0) -> BatchItem:
    return BatchItem(job_id=job_id, index=index, source="synthetic", seed=1, map_request={"M_vir": 1e12})


def map_item(job_id: str, index: int = 0) -> BatchItem:
    return BatchItem(job_id=job_id, index=index, source="map", seed=5, geometry={"fov_kpc": 1000.0, "z_lens": 0.5,
                     "z_source": 2.0}, map_shape=(16, 16), input=b"\x93NUMPY fake bytes \x00\xff")


class FakeClock:
    """A clock the test moves by hand, so lease expiry does not depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def postgres():
    with postgres_server(settings={"fsync": "off"}) as server:  # throwaway data: no need to wait for the disk
        yield server


def fresh_database(server: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite"
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture
def pg_url(postgres) -> str:
    return fresh_database(postgres)


# --- the store's operations, on both backends ---------------------------------------------------------


def test_store_runs_a_batch_to_completion_and_survives_reopening(store_url):
    db = JobDatabase(store_url)
    db.record_jobs([("s1", "synthetic", {"M_vir": 1e12, "seed": 3}, {"metadata": {}})])
    db.create_batch("b1", [item("i1", 0), item("i2", 1)], OPTIONS, owner="A", ttl=60)
    options, pending = db.pending_items("b1")
    assert options == OPTIONS and [p.index for p in pending] == [0, 1]
    assert db.finish_item("i1", result={"ok": 1})
    assert db.finalize_batch("b1") == "running"
    assert db.finish_item("i2", error="bad map")
    assert not db.finish_item("i2", result={"late": 1})  # a finished item is never overwritten
    assert db.finalize_batch("b1") == "completed"
    status = JobDatabase(store_url).batch_status("b1")  # a new connection sees everything
    assert (status["status"], status["completed"], status["failed"], status["progress"]) == ("completed", 1, 1, 100.0)
    assert status["results"][1]["error"] == "bad map" and status["error"] == "1 of 2 items failed"
    assert db.synthetic_requests(["s1", "i1", "nope"]) == {"s1": {"M_vir": 1e12, "seed": 3}}
    db.add_request_counts([("POST /x", 200, 2), ("POST /x", 422, 1)])
    db.add_request_counts([("POST /x", 200, 3)])
    stats = db.stats()
    assert stats["requests"] == {"POST /x": {"200": 5, "422": 1}}
    assert (stats["total_jobs"], stats["completed_jobs"], stats["failed_jobs"], stats["active_jobs"]) == (3, 2, 1, 0)
    assert (stats["total_batches"], stats["active_batches"]) == (1, 0)
    assert db.get_job("nope") is None and db.batch_status("nope") is None
    job = db.get_job("i1")
    assert job is not None and job["kind"] == "batch_item" and job["batch_id"] == "b1" and job["result"] == {"ok": 1}


def test_batch_options_round_trip_and_older_rows_read_as_not_symmetrized(store_url):
    db = JobDatabase(store_url)
    symmetrized = BatchOptions(mc_samples=5, refine=False, base_seed=9, symmetrize=True)
    db.create_batch("b1", [item("i1")], symmetrized, owner="A", ttl=60)
    assert db.pending_items("b1")[0] == symmetrized
    stored_before_symmetrize = {"mc_samples": 5, "refine": True, "base_seed": 9}
    assert BatchOptions.from_stored(stored_before_symmetrize) == BatchOptions(5, True, 9, symmetrize=False)


def test_map_items_keep_their_bytes(store_url):
    db = JobDatabase(store_url)
    db.create_batch("b1", [map_item("m1")], OPTIONS, owner="A", ttl=60)
    [pending] = db.pending_items("b1")[1]
    assert pending == map_item("m1") and isinstance(pending.input, bytes)
    assert db.get_job("m1")["request"] == {"geometry": {"fov_kpc": 1000.0, "z_lens": 0.5, "z_source": 2.0},
                                           "map_shape": [16, 16], "seed": 5}


def test_store_leases_orphans_to_one_runner_and_fails_them_after_max_attempts(store_url):
    clock = FakeClock()
    db = JobDatabase(store_url, clock=clock)
    db.create_batch("b1", [item("i1")], OPTIONS, owner="dead", ttl=0.05)
    assert db.claim_orphans("B", ttl=60, max_attempts=3) == []  # lease still valid
    clock.advance(0.1)
    assert db.renew("dead", ["b1"], ttl=0.05) == ["b1"]  # the owner may renew its own lease...
    clock.advance(0.1)
    assert db.claim_orphans("B", ttl=0.05, max_attempts=3) == ["b1"]  # ...until it lapses
    assert db.claim_orphans("C", ttl=60, max_attempts=3) == []  # B holds it now
    assert db.claim_orphans("B", ttl=60, max_attempts=3) == ["b1"]  # held: a claim whose answer was lost
    assert db.renew("dead", ["b1"], ttl=60) == []  # the old owner lost it
    clock.advance(60.1)
    assert db.claim_orphans("C", ttl=0.05, max_attempts=3) == ["b1"]  # third attempt (first was the creator's)
    clock.advance(0.1)
    assert db.claim_orphans("D", ttl=60, max_attempts=3) == []  # a fourth would exceed max_attempts
    status = db.batch_status("b1")
    assert status["status"] == "failed" and "abandoned" in status["error"]
    assert status["results"][0]["status"] == "failed" and "abandoned" in status["results"][0]["error"]


def test_store_release_hands_leases_over_without_counting_an_attempt(store_url):
    db = JobDatabase(store_url)
    db.create_batch("b1", [item("i1")], OPTIONS, owner="A", ttl=60)
    db.release("A")  # a graceful shutdown
    for owner in ("B", "C", "D"):  # each graceful handover leaves the attempt count where it was
        assert db.claim_orphans(owner, ttl=60, max_attempts=2) == ["b1"]
        db.release(owner)
    assert db.batch_status("b1")["status"] == "queued"


def test_every_call_is_safe_to_repeat(store_url):
    """A caller whose store replica died mid-call sends the call again: nothing may happen twice."""
    db = JobDatabase(store_url)
    for _ in range(2):
        db.record_jobs([("s1", "synthetic", {"seed": 1}, None)])
        db.create_batch("b1", [item("i1", 0), item("i2", 1)], OPTIONS, owner="A", ttl=60)
        db.start_item("i1")
    assert [db.finish_item("i1", result={"n": n}) for n in (1, 2)] == [True, False]
    assert [db.add_request_counts([("GET /a", 200, 4)], flush_id="f1") for _ in range(2)] == [True, False]
    assert db.add_request_counts([("GET /a", 200, 1)], flush_id="f2")
    stats = db.stats()
    assert stats["total_jobs"] == 3 and stats["total_batches"] == 1 and stats["requests"] == {"GET /a": {"200": 5}}
    assert db.get_job("i1")["result"] == {"n": 1} and db.batch_status("b1")["total"] == 2


def test_items_start_and_finish_in_groups(store_url):
    db = JobDatabase(store_url)
    items = [item(f"i{n}", n) for n in range(450)]  # more than one statement's worth of rows
    db.create_batch("b1", items, OPTIONS, owner="A", ttl=60)
    db.start_items([i.job_id for i in items[:300]])
    assert db.finish_item("i0", result={"first": True})
    finished = [(i.job_id, {"n": i.index} if i.index % 2 else None, None if i.index % 2 else "bad")
                for i in items]
    assert db.finish_items(finished) == [i.index != 0 for i in items]  # i0 was finished: its result stands
    assert db.finish_items(finished[:3]) == [False] * 3
    status = db.batch_status("b1")
    assert (status["completed"], status["failed"]) == (226, 224) and status["results"][0]["result"] == {"first": True}
    assert status["results"][7]["result"] == {"n": 7} and status["results"][8]["error"] == "bad"
    assert db.finalize_batch("b1") == "completed"


def test_schema_is_versioned_and_a_newer_store_is_refused(store_url):
    db = JobDatabase(store_url)
    version = db._run(lambda tx: tx.rows("SELECT version FROM schema_version"), transaction=False)
    assert version == [(SCHEMA_VERSION,)]
    JobDatabase(store_url)  # opening again migrates nothing and keeps one row
    assert db._run(lambda tx: tx.rows("SELECT COUNT(*) FROM schema_version"), transaction=False) == [(1,)]
    db._run(lambda tx: tx.run("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,)))
    with pytest.raises(RuntimeError, match="newer than this code"):
        JobDatabase(store_url)


# The schema of the SQLite store before versioning (deployments/store.py on main): the same DDL, reflowed.
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, batch_id TEXT, batch_index INTEGER,
    source TEXT, created REAL NOT NULL, updated REAL NOT NULL, request TEXT NOT NULL, input BLOB, result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id, batch_index);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, status TEXT NOT NULL, total INTEGER NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, owner TEXT, lease_until REAL NOT NULL, attempts INTEGER NOT NULL, options TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
CREATE TABLE IF NOT EXISTS request_counts (
    endpoint TEXT NOT NULL, status INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (endpoint, status)
);
"""


def test_a_sqlite_store_written_before_versioning_opens_and_is_migrated(tmp_path):
    """A file as the unversioned store wrote it (its schema, its rows, its JSON) opens with everything in it."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(UNVERSIONED_SCHEMA)
    old.execute("INSERT INTO jobs (job_id, kind, status, created, updated, request, result) VALUES "
                "('s1', 'synthetic', 'completed', 1.7e9, 1.7e9, ?, ?)",
                ('{"M_vir": 1e12, "seed": 3}', '{"metadata": {}}'))
    old.execute("INSERT INTO batches (batch_id, status, total, created, updated, owner, lease_until, attempts, "
                "options) VALUES ('b1', 'running', 2, 1.7e9, 1.7e9, 'gone', 1.7e9, 1, "
                "'{\"mc_samples\": 10, \"refine\": false, \"base_seed\": 0}')")
    for index, status in enumerate(("completed", "queued")):
        old.execute("INSERT INTO jobs (job_id, kind, status, batch_id, batch_index, source, created, updated, request,"
                    " input, result) VALUES (?, 'batch_item', ?, 'b1', ?, 'synthetic', 1.7e9, 1.7e9, ?, NULL, ?)",
                    (f"i{index}", status, index, '{"map_request": {"M_vir": 1e12}, "seed": 1}',
                     '{"ok": 1}' if status == "completed" else None))
    old.execute("INSERT INTO request_counts VALUES ('POST /api/v1/synthetic', 200, 7)")
    old.commit()
    old.close()

    db = JobDatabase(f"sqlite:///{path}")
    assert db._run(lambda tx: tx.rows("SELECT version FROM schema_version"), transaction=False) == [(SCHEMA_VERSION,)]
    assert db.get_job("s1")["request"] == {"M_vir": 1e12, "seed": 3}
    assert db.stats()["requests"] == {"POST /api/v1/synthetic": {"200": 7}}
    assert db.claim_orphans("new", ttl=60, max_attempts=3) == ["b1"]  # the old runner's lease lapsed long ago
    options, [pending] = db.pending_items("b1")
    assert options == OPTIONS and pending == item("i1", 1)
    assert db.finish_item("i1", result={"ok": 2}) and db.finalize_batch("b1") == "completed"
    assert db.add_request_counts([("POST /api/v1/synthetic", 200, 1)], flush_id="x")  # the new table is there
    assert db.stats()["requests"] == {"POST /api/v1/synthetic": {"200": 8}}


def test_concurrent_runners_claim_disjoint_batches_and_finish_each_item_once(store_url):
    """Four store connections (replicas) claim at once: every orphan goes to one runner. Then every runner
    tries to finish every item (runners that lost a lease finish late): each item completes exactly once."""
    db = JobDatabase(store_url)
    batches = {f"b{k}": [item(f"b{k}-i{n}", n) for n in range(25)] for k in range(8)}
    for batch_id, items in batches.items():
        db.create_batch(batch_id, items, OPTIONS, owner="dead", ttl=-1)  # orphans already
    runners = [JobDatabase(store_url) for _ in range(4)]
    start = threading.Barrier(len(runners))

    def claim(k: int) -> list[str]:
        start.wait()
        return runners[k].claim_orphans(f"r{k}", ttl=3600, max_attempts=5)

    with ThreadPoolExecutor(len(runners)) as pool:
        claims = list(pool.map(claim, range(len(runners))))
    claimed = Counter(batch_id for held in claims for batch_id in held)
    assert set(claimed) == set(batches) and set(claimed.values()) == {1}, claims

    def finish_all(k: int) -> int:
        start.wait()
        return sum(runners[k].finish_item(i.job_id, result={"by": k}) for items in batches.values() for i in items)

    with ThreadPoolExecutor(len(runners)) as pool:
        finished = list(pool.map(finish_all, range(len(runners))))
    assert sum(finished) == sum(len(items) for items in batches.values())
    assert all(runners[0].finalize_batch(b) == "completed" for b in batches)
    stats = db.stats()
    assert stats["completed_jobs"] == 200 and stats["active_jobs"] == 0 and stats["active_batches"] == 0


# --- PostgreSQL: row locks, an outage, a hung server ----------------------------------------------------


def test_a_claim_skips_rows_another_claim_holds(pg_url):
    db = JobDatabase(pg_url)
    for batch_id in ("b1", "b2"):
        db.create_batch(batch_id, [item(f"{batch_id}-i")], OPTIONS, owner="dead", ttl=-1)
    with psycopg.connect(pg_url) as other:  # another replica, mid-claim of b1
        other.execute("SELECT batch_id FROM batches WHERE batch_id = 'b1' FOR UPDATE")
        started = time.monotonic()
        assert db.claim_orphans("B", ttl=60, max_attempts=3) == ["b2"]  # no wait for b1's lock
        assert time.monotonic() - started < 2
        other.rollback()
    assert db.claim_orphans("C", ttl=60, max_attempts=3) == ["b1"]


def test_an_outage_is_unavailable_at_once_and_the_store_recovers_without_reopening(postgres):
    url = fresh_database(postgres)
    db = JobDatabase(url)
    db.record_jobs([("before", "inference", {"seed": 1}, {"r": 1})])
    db.create_batch("b1", [item("i1")], OPTIONS, owner="A", ttl=60)
    postgres.stop()
    try:
        for call in (lambda: db.get_job("before"), db.stats, lambda: db.finish_item("i1", result={})):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 2  # connection refused: no waiting for a pool timeout
        fresh = JobDatabase(url)  # a replica that starts during the outage starts, and migrates later
    finally:
        postgres.start()
    assert db.get_job("before")["result"] == {"r": 1}  # the same object reconnects: nothing accepted is lost
    assert db.finish_item("i1", result={"ok": 1}) and fresh.get_job("i1")["result"] == {"ok": 1}


def test_a_hung_statement_times_out_as_unavailable(pg_url):
    db = JobDatabase(pg_url, timeout_s=1.0)
    db.create_batch("b1", [item("i1")], OPTIONS, owner="A", ttl=60)
    with psycopg.connect(pg_url) as other:
        other.execute("SELECT * FROM jobs WHERE job_id = 'i1' FOR UPDATE")  # holds the row: the update waits
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            db.finish_item("i1", result={"ok": 1})
        assert time.monotonic() - started < 5
        other.rollback()
    assert db.finish_item("i1", result={"ok": 1})  # the connection is still good


# --- store URLs, settings and placement ------------------------------------------------------------------


def test_store_urls_and_settings():
    assert dialect_of("sqlite:///rel.sqlite") == "sqlite" and sqlite_path("sqlite:///rel.sqlite") == "rel.sqlite"
    assert sqlite_path("sqlite:////var/lib/s.sqlite") == "/var/lib/s.sqlite"
    assert sqlite_path("sqlite:///~/s.sqlite") == "~/s.sqlite"
    assert dialect_of("postgresql://u@h:5432/db") == dialect_of("postgres://u@h/db") == "postgresql"
    for bad in ("mysql://u@h/db", "/var/lib/store.sqlite", "sqlite://relative", "sqlite:///", "postgresql://"):
        with pytest.raises(ValueError, match="store URL"):
            dialect_of(bad)
    assert redact("postgresql://lensing:s3cret@db:5432/x") == "postgresql://lensing:***@db:5432/x"
    with pytest.raises(ValueError, match="store URL"):
        AppSettings(store_url="mysql://u@h/db")
    with pytest.raises(ValueError, match="not both"):
        AppSettings(store_url="sqlite:///a.sqlite", store_url_env="LENSING_STORE_URL")
    settings = AppSettings(store_url_env="LENSING_STORE_URL")
    assert settings.resolved_store_url({"LENSING_STORE_URL": "postgresql://u:p@h/db"}) == "postgresql://u:p@h/db"
    with pytest.raises(ValueError, match="LENSING_STORE_URL .* is not set"):
        settings.resolved_store_url({})
    with pytest.raises(ValueError, match=r"\$LENSING_STORE_URL: store URL mysql://u:\*\*\*@h/db is not"):
        store_url_of(None, "LENSING_STORE_URL", {"LENSING_STORE_URL": "mysql://u:pw@h/db"})
    assert AppSettings().resolved_store_url() == "sqlite:///~/.cache/lensing-serve/store.sqlite"


def test_sqlite_runs_one_replica_on_the_store_node(monkeypatch, tmp_path):
    from deployments.app import job_store_options
    from deployments.store import deployment

    assert job_store_options("postgresql", {"lensing_store": 1.0}) == {}
    assert job_store_options("sqlite", {"CPU": 2.0}) == {"num_replicas": 1}
    pinned = job_store_options("sqlite", {"CPU": 2.0, "lensing_store": 1.0})
    assert pinned["num_replicas"] == 1 and pinned["ray_actor_options"]["resources"] == {"lensing_store": 0.01}
    assert pinned["ray_actor_options"]["num_cpus"] == 0.1
    monkeypatch.setattr(deployment, "planned_replicas", lambda: 2)
    with pytest.raises(RuntimeError, match="exactly one JobStore replica"):
        deployment.check_sqlite_placement(f"sqlite:///{tmp_path}/s.sqlite")


# --- the ingress's side: StoreClient and the parts that wait out an outage -------------------------------


class FakeHandle:
    """Stands in for the JobStore DeploymentHandle: `behaviour` decides each call's fate."""

    def __init__(self, *behaviour) -> None:
        self.behaviour, self.calls = list(behaviour), 0

    def __getattr__(self, name: str):
        return self

    def remote(self, *args):
        self.calls += 1
        fate = self.behaviour.pop(0) if len(self.behaviour) > 1 else self.behaviour[0]

        async def answer():
            if fate == "slow":
                await asyncio.sleep(10)
            if isinstance(fate, BaseException):
                raise fate
            return fate

        return answer()


def test_store_client_retries_a_lost_replica_and_reports_unavailable():
    async def scenario() -> None:
        handle = FakeHandle(ActorDiedError(), "ok")
        assert await StoreClient(handle).stats.remote() == "ok" and handle.calls == 2  # sent again, answered
        for handle in (FakeHandle(ActorDiedError()), FakeHandle(StoreUnavailable("db gone: a traceback")),
                       FakeHandle("slow")):
            with pytest.raises(StoreUnavailable) as error:
                await StoreClient(handle, timeout_s=0.2).stats.remote()
            assert "traceback" not in str(error.value)
        with pytest.raises(KeyError):  # a bug is not an outage
            await StoreClient(FakeHandle(KeyError("no batch"))).pending_items.remote("b")

    asyncio.run(scenario())


class AsyncStore:
    """A JobDatabase behind the interface the ingress parts use (`await store.NAME.remote(...)`), calls in
    threads as in a replica; `down` makes every call fail as the StoreClient reports an outage, and
    `lose_answers` commits a call but raises as if its replica died before answering."""

    def __init__(self, db: JobDatabase) -> None:
        self.db, self.down, self.lose_answers = db, False, 0

    def __getattr__(self, name: str):
        method = getattr(self.db, name)
        store = self

        class Method:
            @staticmethod
            async def remote(*args, **kwargs):
                if store.down:
                    raise StoreUnavailable("down")
                result = await asyncio.to_thread(method, *args, **kwargs)
                if store.lose_answers:
                    store.lose_answers -= 1
                    raise StoreUnavailable("answer lost")
                return result

        return Method


def test_batch_runners_wait_out_an_outage_and_keep_their_leases(postgres):
    """A PostgreSQL outage longer than the lease TTL, with two runners sweeping: the batch's own runner keeps
    it (one attempt), results computed during the outage are stored after it, every item finishes once."""
    url = fresh_database(postgres)
    settings = BatchJobSettings(concurrency=4, lease_ttl_s=3.0, max_attempts=3, item_retries=0)
    processed: Counter[str] = Counter()

    async def scenario() -> None:
        async def process(options: BatchOptions, item_: BatchItem) -> dict:
            processed[item_.job_id] += 1
            await asyncio.sleep(0.02)
            return {"seed": item_.seed}

        a = BatchRunner(AsyncStore(JobDatabase(url)), process, settings)  # type: ignore[arg-type]
        b = BatchRunner(AsyncStore(JobDatabase(url)), process, settings)  # type: ignore[arg-type]
        items = [item(f"i{n}", n) for n in range(120)]
        await asyncio.to_thread(JobDatabase(url).create_batch, "b1", items, OPTIONS, a.owner, settings.lease_ttl_s)
        a.start()
        b.start()
        a.run("b1")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres.stop)
        try:
            await asyncio.sleep(2 * settings.lease_ttl_s)  # every lease lapses meanwhile
        finally:
            await asyncio.to_thread(postgres.start)
        db = JobDatabase(url)
        for _ in range(600):
            status = await asyncio.to_thread(db.batch_status, "b1")
            if status["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        await a.stop()
        await b.stop()
        assert status["status"] == "completed" and status["completed"] == 120, status["status"]
        attempts = await asyncio.to_thread(
            db._run, lambda tx: tx.rows("SELECT attempts, owner FROM batches WHERE batch_id = 'b1'"), False)
        assert attempts == [(1, None)], attempts  # never claimed by the other runner
        assert set(processed) == {i.job_id for i in items} and set(processed.values()) == {1}

    asyncio.run(scenario())


def test_request_counters_are_counted_once_when_an_answer_is_lost(tmp_path):
    db = JobDatabase(f"sqlite:///{tmp_path}/s.sqlite")
    store = AsyncStore(db)

    async def scenario() -> None:
        stats = RequestStats(store, flush_s=3600)  # type: ignore[arg-type]
        for _ in range(3):
            stats.record("/api/v1/stats", "GET", 200, 1.0)
        store.lose_answers = 1  # committed, but the caller sees a failure
        with pytest.raises(StoreUnavailable):
            await stats.flush()
        stats.record("/api/v1/stats", "GET", 200, 1.0)
        store.down = True
        with pytest.raises(StoreUnavailable):
            await stats.flush()
        store.down = False
        await stats.flush()  # the lost flush again (same id: not added twice), then the new request

    asyncio.run(scenario())
    assert db.stats()["requests"] == {"GET /api/v1/stats": {"200": 4}}


def test_inference_records_are_held_while_the_store_is_down(tmp_path, monkeypatch):
    from deployments import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "RETRY_PAUSE_S", (0.05, 0.05))
    db = JobDatabase(f"sqlite:///{tmp_path}/s.sqlite")
    store = AsyncStore(db)

    async def scenario() -> None:
        recorder = JobRecorder(store, max_pending=2)  # type: ignore[arg-type]
        store.down = True
        recorder.record("j1", "inference", {"seed": 1}, {"M": 1})  # answered; its record waits here
        for _ in range(100):  # the writer finds the store down
            if recorder.store_down:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(StoreUnavailable):  # a synthetic job's id must be stored before it is handed out
            recorder.record("s1", "synthetic", {"seed": 2}, None)
        recorder.record("j2", "inference", {"seed": 3}, None)
        with pytest.raises(StoreUnavailable):  # bounded
            recorder.record("j3", "inference", {"seed": 4}, None)
        assert (await recorder.job("j1"))["result"] == {"M": 1} and recorder.pending == 2
        store.down = False
        for _ in range(100):
            if not recorder.pending:
                break
            await asyncio.sleep(0.05)
        assert recorder.pending == 0
        await recorder.flush()

    asyncio.run(scenario())
    assert db.get_job("j1")["result"] == {"M": 1} and db.get_job("j2")["request"] == {"seed": 3}
    assert db.get_job("s1") is None and db.get_job("j3") is None


def test_job_records_are_written_behind_in_groups_and_survive_a_failed_write(store_url, monkeypatch):
    """`record` returns before the store write; a failed write keeps the records and retries; the replica
    reads its queued records back; a write repeated after a lost answer stores each job once; while the
    store is down synthetic jobs are refused and inference records queued."""
    import asyncio

    from deployments import recorder as recorder_module
    from deployments.http.errors import StoreUnavailable
    from deployments.recorder import JobRecorder

    monkeypatch.setattr(recorder_module, "RETRY_PAUSE_S", (0.01, 0.02))
    db = JobDatabase(store_url)

    class FlakyStore:
        """A StoreClient stand-in over a real JobDatabase: the first write commits but its answer is lost
        (the store is unreachable), the second fails outright, then writes go through."""

        def __init__(self) -> None:
            self.writes: list[int] = []
            self.record_jobs = self._method(self._record)
            self.get_job, self.synthetic_requests = self._method(db.get_job), self._method(db.synthetic_requests)

        @staticmethod
        def _method(function):
            class Remote:
                @staticmethod
                async def remote(*args):
                    return function(*args)
            return Remote

        def _record(self, rows):
            self.writes.append(len(rows))
            if len(self.writes) == 1:
                db.record_jobs(rows)
            if len(self.writes) <= 2:
                raise StoreUnavailable("the store's answer was lost")
            db.record_jobs(rows)

    async def scenario() -> None:
        store = FlakyStore()
        recorder = JobRecorder(store)  # type: ignore[arg-type]
        for k in range(5):
            recorder.record(f"j{k}", "synthetic", {"M_vir": 1e12, "seed": k}, {"metadata": {}})
        assert (await recorder.job("j3"))["request"]["seed"] == 3  # queued, read back at once
        assert (await recorder.synthetic_requests(["j1", "nope"])) == {"j1": {"M_vir": 1e12, "seed": 1}}
        for _ in range(100):  # the first write fails: the store is down
            if recorder.store_down:
                break
            await asyncio.sleep(0.005)
        assert recorder.store_down
        with pytest.raises(StoreUnavailable):
            recorder.record("s9", "synthetic", {}, None)  # a synthetic job id must be storable when handed out
        recorder.record("i9", "inference", {"seed": 9}, {"predictions": {}})  # inference answers and waits
        for _ in range(400):
            if not recorder.pending:
                break
            await asyncio.sleep(0.005)
        assert not recorder.pending and not recorder.store_down and len(store.writes) >= 3
        assert db.stats()["total_jobs"] == 6  # each job once, though the first group was written twice
        assert (await recorder.job("j4"))["kind"] == "synthetic" and (await recorder.job("i9"))["kind"] == "inference"
        await recorder.flush()

    asyncio.run(scenario())
