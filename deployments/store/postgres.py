"""The cluster backend: a PostgreSQL server reached with psycopg 3 (docs/design.md section 10).

Several JobStore replicas, on any nodes, share one database; the server keeps the data when nodes come
and go. Each replica holds a small pool of connections (`POOL_SIZE`), opened on demand and kept while
they work. Why not psycopg_pool: while the server is down it makes callers wait for its `timeout` and
reconnects in the background with an exponential backoff (1, 2, 4, 8, 16 s ...), so after a 20 s outage
the store would stay away for up to 16 s more; here a call during an outage fails at once (connection
refused: `StoreUnavailable`, a 503), and the first call after the server is back connects again.

Every connection has a statement timeout (and a lock timeout) of `timeout_s`, so a server that hangs
fails a call instead of holding it; libpq's connect timeout and TCP keepalives bound a server that is
gone from the network. A connection that broke (the server restarted since it was opened) is thrown
away and the call run again on a fresh one: the store's calls are safe to repeat. Deadlocks and
serialisation failures are retried the same way. Transactions run at READ COMMITTED; the lease claim
locks the rows it takes with `FOR UPDATE SKIP LOCKED` (`claim_lock`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from ..http.errors import StoreUnavailable
from .backend import Backend, Transaction, redact

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
POOL_SIZE = 4  # connections per JobStore replica: its calls are short; more would only queue in the server
ATTEMPTS = 3  # runs of one call: a stale connection or a deadlock is retried on a fresh one
RUN_AGAIN = (pg_errors.TransactionRollback, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """`?` marks as psycopg's `%s` (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresTransaction(Transaction):
    def __init__(self, cursor: psycopg.Cursor) -> None:
        self.cursor = cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if params:
            self.cursor.execute(_pg(sql), params)
        else:
            self.cursor.execute(sql)  # without parameters psycopg sends the text as it is (DDL, constant queries)
        return self.cursor.fetchall() if self.cursor.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.rows(sql, params)
        return self.cursor.rowcount

    def run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self.cursor.executemany(_pg(sql), params)  # pipelined: one round trip for many rows


def connection_info(url: str, timeout_s: float) -> str:
    """libpq connection string of a store URL, with the store's timeouts added to its own options."""
    params = conninfo_to_dict(url)
    ms = int(timeout_s * 1000)
    ours = f"-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={3 * ms}"
    params["options"] = f"{params.get('options') or ''} {ours}".strip()
    defaults = {"connect_timeout": str(max(2, math.ceil(timeout_s / 2))), "application_name": "lensing-serve-store",
                "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}
    return make_conninfo("", **(defaults | params))


class ConnectionPool:
    """At most `size` connections, opened on demand, kept while healthy; `acquire` waits `wait_s` at most."""

    def __init__(self, conninfo: str, size: int, wait_s: float) -> None:
        self.conninfo, self.size, self.wait_s = conninfo, size, wait_s
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)

    def acquire(self) -> tuple[psycopg.Connection, bool]:
        """(a connection, whether it was used before); raises psycopg.OperationalError if none can be opened."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise StoreUnavailable(f"all {self.size} connections of this JobStore replica stayed busy for "
                                   f"{self.wait_s:g} s")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            return conn, True
        try:
            return psycopg.connect(self.conninfo, autocommit=True), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: psycopg.Connection) -> None:
        """Keep a connection that is idle and sound, close any other; frees its slot."""
        try:
            if not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE:
                with self._lock:
                    self._idle.append(conn)
                    return
            conn.close()
        finally:
            self._slots.release()

    def clear_idle(self) -> None:
        """Close the idle connections (after one of them turned out to be broken, the others likely are)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class PostgresBackend(Backend):
    dialect = "postgresql"
    claim_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, timeout_s: float = 10.0, pool_size: int = POOL_SIZE) -> None:
        self.url = redact(url)
        self._pool = ConnectionPool(connection_info(url, timeout_s), pool_size, wait_s=timeout_s)
        self._available = True
        self._state_lock = threading.Lock()

    def run(self, work: Callable[[Transaction], T], transaction: bool = True) -> T:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                conn, reused = self._pool.acquire()
            except psycopg.Error as exc:
                raise self._unavailable(exc) from exc
            try:
                with conn.cursor() as cursor:
                    tx = PostgresTransaction(cursor)
                    if not transaction:
                        result = work(tx)
                    else:
                        with conn.transaction():
                            result = work(tx)
            except RUN_AGAIN as exc:  # a deadlock or serialisation failure: run it again
                if attempt == ATTEMPTS:
                    raise self._unavailable(exc) from exc
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if conn.broken and reused and attempt < ATTEMPTS:  # opened before the server restarted
                    self._pool.clear_idle()
                    continue
                raise self._unavailable(exc) from exc
            finally:
                self._pool.release(conn)
            self._set_available(True, None)
            return result
        raise AssertionError("unreachable: every attempt returns, continues or raises")

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        self._set_available(False, exc)
        return StoreUnavailable("the job store's database cannot be reached; retry shortly")

    def _set_available(self, available: bool, cause: BaseException | None) -> None:
        """One log line when the database goes away, one when it is back."""
        with self._state_lock:
            if available == self._available:
                return
            self._available = available
        if available:
            logger.info("job store database %s reachable again", self.url)
        else:
            reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
            logger.warning("job store database %s unreachable (%s); calls answer 503 until it is back",
                           self.url, reason)

    def tables(self, tx: Transaction) -> set[str]:
        return {name for (name,) in tx.rows("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}

    def close(self) -> None:
        self._pool.clear_idle()
