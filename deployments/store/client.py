"""The ingress's side of the job store: the JobStore handle with timeouts, retries and one error type.

`StoreClient(handle)` is used exactly like the handle (`await store.record_jobs.remote(rows)`), and:
- a call whose JobStore replica died (or that reached none) is sent again, up to `attempts` times: every
  store call is safe to repeat (database.py), so a result is never lost to a replica's death;
- a call gets `timeout_s` to answer (a handle waits as long as no replica is up otherwise);
- anything that means "the store cannot be reached now" (its database down: `StoreUnavailable` raised in
  the replica; no replica; the timeout) is raised here as a plain `StoreUnavailable`, which the HTTP layer
  answers with 503 and Retry-After, and the batch runner waits out. Other errors (bugs) pass unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from ..http.errors import StoreUnavailable

logger = logging.getLogger("ray.serve")

REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
RETRY_DELAY_S = 0.2


class StoreClient:
    """A JobStore DeploymentHandle whose calls time out, survive a lost replica and raise StoreUnavailable."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float = 10.0, attempts: int = 3) -> None:
        self.handle, self.timeout_s, self.attempts = handle, timeout_s, attempts

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                response = getattr(self.handle, method).remote(*args, **kwargs)
                return await asyncio.wait_for(response, self.timeout_s)
            except StoreUnavailable:  # the replica could not reach its database (it logged why)
                # raised afresh: the one that crossed from the replica carries its traceback in its text
                raise StoreUnavailable("the job store's database cannot be reached; retry shortly") from None
            except TimeoutError:
                raise StoreUnavailable(f"the job store did not answer {method} within {self.timeout_s:g} s") from None
            except REPLICA_LOST as exc:
                if attempt == self.attempts:
                    raise StoreUnavailable("no job store replica answers; retry shortly") from exc
                logger.warning("job store replica lost during %s (%s); sending it again", method, type(exc).__name__)
                await asyncio.sleep(RETRY_DELAY_S * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")


class _Method:
    """`client.NAME`: `.remote(...)` returns an awaitable, like a handle's method."""

    def __init__(self, client: StoreClient, name: str) -> None:
        self.client, self.name = client, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.call(self.name, *args, **kwargs)
