"""What the job store needs from a database, and the store URL that picks one.

`JobDatabase` writes its SQL once, with `?` marks, and hands each call to a `Backend` as a function of a
transaction (`run(work)`): the backend opens the transaction, runs `work(tx)`, commits, and may run the
function again (a connection that went stale while the server restarted, a deadlock), so every call of
the store is written to be safe to repeat. A backend raises `StoreUnavailable` when its database cannot
be reached, and lets every other error (a bug of ours) through unchanged.

Store URLs: `sqlite:///PATH` (SQLAlchemy's convention: `sqlite:///relative`, `sqlite:////absolute`,
`sqlite:///~/in/home`), or `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?libpq options]`
(also `postgres://`). A password belongs in the environment (`store_url_env`), never in a config file.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

Dialect = Literal["sqlite", "postgresql"]
T = TypeVar("T")
SCHEMES: dict[str, Dialect] = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


def dialect_of(url: str) -> Dialect:
    """The backend a store URL names; ValueError with the accepted forms for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES or not rest:
        shown = redact(url) if sep else repr(url)
        raise ValueError(f"store URL {shown} is not sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    dialect = SCHEMES[scheme.lower()]
    if dialect == "sqlite" and (not rest.startswith("/") or rest == "/"):
        raise ValueError(f"store URL {url!r}: a SQLite URL is sqlite:///PATH (three slashes, then the file)")
    return dialect


def sqlite_path(url: str) -> str:
    """The file of a sqlite:/// URL (relative, absolute with a fourth slash, or ~/...)."""
    return url.partition("://")[2][1:]


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for logs and error messages."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


class Transaction(ABC):
    """One open transaction; SQL uses `?` marks in both dialects."""

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of a query."""

    @abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a statement; the number of rows it changed."""

    @abstractmethod
    def run_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Execute a statement once per parameter row."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None


class Backend(ABC):
    """A database that runs the store's transactions."""

    dialect: Dialect
    # Appended to the SELECT that claims orphaned batches: on PostgreSQL each runner locks the rows it
    # claims and skips those another runner is claiming; SQLite's write transaction holds the whole file.
    claim_lock: str = ""

    @abstractmethod
    def run(self, work: Callable[[Transaction], T], transaction: bool = True) -> T:
        """`work(tx)` in one transaction, committed; may be run more than once. `transaction=False`: each
        statement commits by itself (one round trip): for reads, and for writes of a single statement."""

    @abstractmethod
    def tables(self, tx: Transaction) -> set[str]:
        """Names of the tables that exist."""

    @abstractmethod
    def close(self) -> None: ...
