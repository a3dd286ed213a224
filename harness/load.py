"""Background HTTP load for fault tests: client threads send a fixed mix of requests back to back while a
test breaks something (kills a replica, stops the database), and every outcome is kept with its times."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Call:
    """One request of the mix: `name` groups outcomes (e.g. by endpoint); `options` go to requests."""

    name: str
    method: str
    url: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    finished: float
    name: str
    status: int | str  # the HTTP status, or the exception's name when no response came
    retry_after: str | None = None
    job_id: str | None = None


class Load:
    """`clients` threads cycling through `calls` (client k starts at call k) until the context exits."""

    def __init__(self, calls: list[Call], clients: int = 4, timeout: float = 120.0) -> None:
        self.calls, self.timeout = calls, timeout
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def _client(self, k: int) -> None:
        with requests.Session() as session:
            n = k
            while not self.stopping.is_set():
                call = self.calls[n % len(self.calls)]
                n += 1
                started = time.monotonic()
                try:
                    response = session.request(call.method, call.url, timeout=self.timeout, **call.options)
                    outcome = Outcome(started, time.monotonic(), call.name, response.status_code,
                                      response.headers.get("Retry-After"), response.headers.get("X-Job-Id"))
                except requests.RequestException as exc:
                    outcome = Outcome(started, time.monotonic(), call.name, type(exc).__name__)
                self.outcomes.append(outcome)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(150)

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def between(self, start: float, end: float) -> list[Outcome]:
        """The outcomes of requests that started and finished within [start, end]."""
        return [o for o in list(self.outcomes) if start <= o.started and o.finished <= end]

    def first_success_after(self, moment: float, name: str | None = None) -> float | None:
        """When the first request started after `moment` (of call `name`, if given) finished with a 200."""
        done = [o.finished for o in list(self.outcomes)
                if o.started >= moment and o.status == 200 and (name is None or o.name == name)]
        return min(done) if done else None
