"""Batch jobs: submission (validate, persist, acknowledge) and the background runner of an ingress replica.

A batch is persisted before it is acknowledged (`BatchJobs.submit`), then run here: items go through the
same generator and PINN pool as single requests, at most `concurrency` at a time (so they batch in the
pool), each result stored as soon as it exists (`BatchJobs.process`). A sweeper renews this runner's
leases (lease protocol in `store/database.py`) and claims batches whose runner died (their lease expired),
resuming them from their unfinished items. Input errors (`InputError`, `InvalidInput`) fail an item at
once; any other error (a replica restarting, a fault of ours) is retried `item_retries` times, then fails
the item with the reason. Nothing is lost: a batch ends completed, or failed with a reason.

Items are marked running and finished in groups (one store call and one commit per group, `GroupedCalls`).
While the job store is unavailable (`StoreUnavailable`) the runner waits it out instead of failing: its
store calls are retried with a backoff (results computed meanwhile are kept until they are stored), and
after an outage it only renews its leases for one lease TTL (from its first sweep that reaches the store)
before it claims orphans again, so a batch whose lease lapsed during the outage goes back to its live
runner, not to whichever runner sweeps first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from lensing.cosmology import MapGeometry
from lensing.io import from_npy_bytes, to_npy_bytes
from lensing.limits import InputError
from lensing.synthetic import MapRequest

from .batch_items import BatchItem, BatchOptions
from .grouping import GroupedCalls
from .http.codecs import check_map
from .http.errors import InvalidInput, StoreUnavailable, UnknownId
from .http.schemas import BatchRequest
from .inference import Inference
from .pinn_pool import InferenceItem
from .recorder import JobRecorder
from .settings import BatchJobSettings
from .store.client import StoreClient
from .synthesis import Synthesis, map_request, new_seed

logger = logging.getLogger("ray.serve")

ProcessItem = Callable[[BatchOptions, BatchItem], Awaitable[dict]]
INPUT_ERRORS = (InputError, InvalidInput)  # the client's fault: retrying cannot help
STORE_RETRY_S = (0.2, 5.0)  # first and longest wait between store calls while the store is unavailable
JOB_RECORD_GRACE_S = 0.5  # how long an unknown job id of a new batch is given to reach the store


def replica_tag() -> str:
    """'TAG-' of the Serve replica this runs in (so a lease names its replica), or '' outside Serve."""
    from ray import serve

    try:
        return f"{serve.get_replica_context().replica_tag}-"
    except Exception:  # noqa: BLE001 - not in a replica (a test): the uuid alone
        return ""


class BatchRunner:
    """Runs the batches this replica owns or claims; `start` in the app's lifespan, `stop` at shutdown."""

    def __init__(self, store: StoreClient, process: ProcessItem, settings: BatchJobSettings) -> None:
        self.store, self.process, self.settings = store, process, settings
        self.owner = f"runner-{replica_tag()}{uuid.uuid4().hex[:12]}"
        self._tasks: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._stopped = False
        # Items start and finish in groups: one store call and one commit for the items that finish while
        # the previous group is being stored (a lone item goes at once), as job records do (recorder.py).
        self._starts: GroupedCalls[str, None] = GroupedCalls(self._start_items, max_group=256, in_flight=1)
        self._finishes: GroupedCalls[tuple[str, dict | None, str | None], bool] = GroupedCalls(
            self._finish_items, max_group=256, in_flight=1)
        self._sweeper: asyncio.Task | None = None
        self._claims_after = 0.0  # time.monotonic() before which sweeps only renew (set by an outage)
        self._store_down = False

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Cancel everything and hand the leases back, so another replica resumes at its next sweep."""
        self._stopped = True
        owned = list(self._tasks)
        tasks = [t for t in (self._sweeper, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if owned:
            try:
                await self.store.release.remote(self.owner)
            except StoreUnavailable:
                logger.warning("job store unavailable at shutdown: the leases of %d batches lapse in %g s instead",
                               len(owned), self.settings.lease_ttl_s)

    def run(self, batch_id: str) -> None:
        """Start running a batch this runner holds the lease of."""
        if batch_id in self._tasks:
            return
        task = asyncio.create_task(self._run(batch_id), context=contextvars.Context())  # not the request's
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self._sweep()
            except StoreUnavailable:
                if not self._store_down:
                    logger.warning("job store unavailable: batches wait for it (results are kept until stored)")
                self._store_down = True
            except Exception:
                logger.exception("batch sweep failed")
            await asyncio.sleep(self.settings.lease_ttl_s / 3)

    async def _sweep(self) -> None:
        owned = list(self._tasks)
        kept = set(await self.store.renew.remote(self.owner, owned, self.settings.lease_ttl_s))
        if self._store_down:  # every live runner renews within one TTL of this; claims wait that long
            logger.info("job store back: %d leases renewed", len(kept))
            self._store_down = False
            self._claims_after = time.monotonic() + self.settings.lease_ttl_s
        for batch_id in owned:
            if batch_id not in kept and batch_id in self._tasks:
                logger.warning("lost the lease of batch %s; stopping it here", batch_id)
                self._tasks[batch_id].cancel()
        if time.monotonic() < self._claims_after:  # live runners renew the leases that lapsed in the outage first
            return
        held = await self.store.claim_orphans.remote(self.owner, self.settings.lease_ttl_s, self.settings.max_attempts)
        for batch_id in held:
            if batch_id not in self._tasks:
                logger.info("resuming batch %s", batch_id)
                self.run(batch_id)

    async def _stored(self, method: str, *args, **kwargs):
        """A store call that waits out an outage of the store (every store call is safe to repeat)."""
        delay, longest = STORE_RETRY_S
        while True:
            try:
                return await getattr(self.store, method).remote(*args, **kwargs)
            except StoreUnavailable:
                if self._stopped:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, longest)

    async def _start_items(self, job_ids: list[str]) -> list[None]:
        await self._stored("start_items", job_ids)
        return [None] * len(job_ids)

    async def _finish_items(self, finished: list[tuple[str, dict | None, str | None]]) -> list[bool]:
        return await self._stored("finish_items", finished)

    async def _run(self, batch_id: str) -> None:
        try:
            options, items = await self._stored("pending_items", batch_id)
            await asyncio.gather(*(self._run_item(options, item) for item in items))
            await self._stored("finalize_batch", batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s stopped; a later sweep resumes it", batch_id)

    async def _run_item(self, options: BatchOptions, item: BatchItem) -> None:
        async with self._slots:
            await self._starts.submit(item.job_id)
            error = "not run"
            for attempt in range(self.settings.item_retries + 1):
                try:
                    result = await self.process(options, item)
                except asyncio.CancelledError:
                    raise
                except INPUT_ERRORS as exc:
                    error = str(exc)
                    break
                except Exception as exc:  # noqa: BLE001 - transient until proven otherwise
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    logger.warning("batch item %s attempt %d failed: %s", item.job_id, attempt + 1, error)
                    await asyncio.sleep(0.5 * (attempt + 1))
                else:
                    await self._finishes.submit((item.job_id, result, None))
                    return
            await self._finishes.submit((item.job_id, None, error))


class BatchJobs:
    """/api/v1/batch: validates and persists a batch, runs its items (`BatchRunner`), reports its status."""

    def __init__(self, store: StoreClient, recorder: JobRecorder, synthesis: Synthesis, inference: Inference,
                 settings: BatchJobSettings, max_map_side: int) -> None:
        self.store, self.recorder, self.synthesis, self.inference = store, recorder, synthesis, inference
        self.settings, self.max_map_side = settings, max_map_side
        self.runner = BatchRunner(store, self.process, settings)

    async def submit(self, batch: BatchRequest) -> dict:
        """Validate, persist (before acknowledging) and start a batch; returns the acknowledgement."""
        total = len(batch.job_ids) + len(batch.synthetic) + len(batch.maps)
        if total == 0:
            raise InvalidInput((), "a batch needs at least one item in job_ids, synthetic or maps")
        if total > self.settings.max_items:
            raise InvalidInput((), f"a batch holds at most {self.settings.max_items} items, got {total}")
        known = await self.recorder.synthetic_requests(batch.job_ids)
        if len(known) < len(set(batch.job_ids)):  # a job just answered by another replica may be on its way
            await asyncio.sleep(JOB_RECORD_GRACE_S)  # to the store (records are written behind the response)
            known = await self.recorder.synthetic_requests(batch.job_ids)
        for index, job_id in enumerate(batch.job_ids):
            if job_id not in known:
                raise UnknownId(f"job_ids[{index}]: no synthetic job {job_id!r}")
        base_seed = batch.seed if batch.seed is not None else new_seed()
        sources: list[dict] = [{"source": "job", "map_request": known[job_id], "source_job_id": job_id}
                               for job_id in batch.job_ids]
        for index, spec in enumerate(batch.synthetic):
            request = map_request(spec, spec.seed if spec.seed is not None else new_seed(), ("synthetic", index))
            sources.append({"source": "synthetic", "map_request": asdict(request)})
        for index, entry in enumerate(batch.maps):
            kappa = check_map(entry.convergence_map, ("maps", index, "convergence_map"), self.max_map_side)
            geometry = {"fov_kpc": entry.fov_kpc, "z_lens": entry.z_lens, "z_source": entry.z_source}
            sources.append({"source": "map", "geometry": geometry, "map_shape": kappa.shape,
                            "input": to_npy_bytes(kappa)})
        items = [BatchItem(job_id=uuid.uuid4().hex, index=index, seed=(base_seed + index) % 2**63, **source)
                 for index, source in enumerate(sources)]
        batch_id = uuid.uuid4().hex
        options = BatchOptions(mc_samples=batch.mc_samples, refine=batch.refine, base_seed=base_seed,
                               symmetrize=batch.symmetrize)
        await self.store.create_batch.remote(batch_id, items, options, self.runner.owner, self.settings.lease_ttl_s)
        self.runner.run(batch_id)
        return {"batch_id": batch_id, "message": f"Batch job submitted with {total} items",
                "status_url": f"/api/v1/batch/{batch_id}/status", "total": total,
                "job_ids": [item.job_id for item in items]}

    async def process(self, options: BatchOptions, item: BatchItem) -> dict:
        """One item: (re)generate its map if synthetic, infer it; the truth rides along."""
        truth, noise_sigma = None, None  # a given map's noise is estimated; a synthetic one's is known
        if item.source == "map":
            assert item.input is not None and item.geometry is not None
            kappa, geometry = from_npy_bytes(item.input), MapGeometry(**item.geometry)
        else:
            assert item.map_request is not None
            spec = MapRequest(**item.map_request)
            generated = await self.synthesis.render(spec)
            kappa, truth = generated.map.convergence, generated.map.parameters()
            geometry, noise_sigma = MapGeometry(spec.fov_kpc, spec.z_lens, spec.z_source), spec.noise_sigma
        result = await self.inference.run(
            InferenceItem(kappa, geometry, options.mc_samples, item.seed, options.refine, noise_sigma,
                          options.symmetrize))
        result = {k: v for k, v in result.items() if k != "serving"} | {"seed": item.seed}
        return {"truth": truth, **result} if truth is not None else result

    async def status(self, batch_id: str) -> dict:
        status = await self.store.batch_status.remote(batch_id)
        if status is None:
            raise UnknownId(f"no batch {batch_id!r}")
        return status
