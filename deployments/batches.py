"""Background runner of batch jobs inside an ingress replica (lease protocol in `store.py`).

A batch is persisted before it is acknowledged, then run here: items go through the same generator
and PINN pool as single requests, at most `concurrency` at a time (so they batch in the pool), each
result stored as soon as it exists. A sweeper renews this runner's leases and claims batches whose
runner died (their lease expired), resuming them from their unfinished items. Input errors fail an item
at once; other errors (a replica restarting) are retried `item_retries` times, then fail the item with
the reason. Nothing is lost: a batch ends completed, or failed with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from ray.serve.handle import DeploymentHandle

from .settings import BatchJobSettings

logger = logging.getLogger("ray.serve")

ProcessItem = Callable[[dict, dict], Awaitable[dict]]  # (batch options, item) -> result


class BatchRunner:
    """Runs the batches this replica owns or claims; `start` in the app's lifespan, `stop` at shutdown."""

    def __init__(self, store: DeploymentHandle, process: ProcessItem, settings: BatchJobSettings) -> None:
        self.store, self.process, self.settings = store, process, settings
        self.owner = f"runner-{uuid.uuid4().hex[:12]}"
        self._tasks: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Cancel everything and hand the leases back, so another replica resumes at its next sweep."""
        owned = list(self._tasks)
        tasks = [t for t in (self._sweeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if owned:
            await self.store.release.remote(self.owner)

    def run(self, batch_id: str) -> None:
        """Start running a batch this runner holds the lease of."""
        if batch_id in self._tasks:
            return
        task = asyncio.create_task(self._run(batch_id))
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self._sweep()
            except Exception:  # noqa: BLE001 - the store may be restarting; try again next period
                logger.exception("batch sweep failed")
            await asyncio.sleep(self.settings.lease_ttl_s / 3)

    async def _sweep(self) -> None:
        owned = list(self._tasks)
        kept = set(await self.store.renew.remote(self.owner, owned, self.settings.lease_ttl_s))
        for batch_id in owned:
            if batch_id not in kept and batch_id in self._tasks:
                logger.warning("lost the lease of batch %s; stopping it here", batch_id)
                self._tasks[batch_id].cancel()
        claimed = await self.store.claim_orphans.remote(self.owner, self.settings.lease_ttl_s,
                                                        self.settings.max_attempts)
        for batch_id in claimed:
            logger.info("resuming batch %s", batch_id)
            self.run(batch_id)

    async def _run(self, batch_id: str) -> None:
        try:
            options, items = await self.store.pending_items.remote(batch_id)
            await asyncio.gather(*(self._run_item(options, item) for item in items))
            await self.store.finalize_batch.remote(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the lease lapses and the batch is claimed again or failed
            logger.exception("batch %s stopped; it will be resumed after its lease expires", batch_id)

    async def _run_item(self, options: dict, item: dict) -> None:
        async with self._slots:
            await self.store.start_item.remote(item["job_id"])
            error = "not run"
            for attempt in range(self.settings.item_retries + 1):
                try:
                    result = await self.process(options, item)
                except asyncio.CancelledError:
                    raise
                except ValueError as exc:  # bad input: retrying cannot help
                    error = str(exc)
                    break
                except Exception as exc:  # noqa: BLE001 - transient until proven otherwise
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    logger.warning("batch item %s attempt %d failed: %s", item["job_id"], attempt + 1, error)
                    await asyncio.sleep(0.5 * (attempt + 1))
                else:
                    await self.store.finish_item.remote(item["job_id"], result=result)
                    return
            await self.store.finish_item.remote(item["job_id"], error=error)
