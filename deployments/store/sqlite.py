"""The embedded backend: one SQLite file, the laptop's store and the default (docs/design.md section 10).

WAL mode with synchronous=NORMAL: a commit survives the death of any process (the store's included); only
an OS crash can lose the last commits. One connection, guarded by a lock, because Serve runs the store's
sync methods in a thread pool. Writes run in `BEGIN IMMEDIATE` transactions, so even two processes on
one file would not hand the same batch to two runners; still, the file belongs to one JobStore replica
(deployment.py refuses more), on the node whose disk holds it. A busy, locked, full or unreadable file
is `StoreUnavailable`; every other SQLite error is a bug and propagates.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..http.errors import StoreUnavailable
from .backend import Backend, Transaction

T = TypeVar("T")
# Primary result codes that mean "the file cannot be used right now", not "the SQL is wrong".
UNAVAILABLE_CODES = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 10: "SQLITE_IOERR", 13: "SQLITE_FULL",
                     14: "SQLITE_CANTOPEN"}


class SQLiteTransaction(Transaction):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.db.execute(sql, params).rowcount

    def run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, params)


class SQLiteBackend(Backend):
    dialect = "sqlite"

    def __init__(self, path: str, timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def run(self, work: Callable[[Transaction], T], transaction: bool = True) -> T:
        tx = SQLiteTransaction(self._db)
        try:
            with self._lock:
                if not transaction:  # statements commit one by one; every write goes through this lock
                    return work(tx)
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(tx)
                except BaseException:
                    if self._db.in_transaction:  # SQLite itself rolls back after some errors (a full disk)
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
        except sqlite3.OperationalError as exc:
            name = UNAVAILABLE_CODES.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
            if name is None:
                raise
            raise StoreUnavailable(f"the job store's SQLite file cannot be used right now ({name})") from exc

    def tables(self, tx: Transaction) -> set[str]:
        return {name for (name,) in tx.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
