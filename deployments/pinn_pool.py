"""The PINN pool: the `PINNPredictor` deployment and what it shares with the ingress (docs/design.md section 7).

Deployment. The ingress calls `infer_many(items)` with the maps of its concurrent requests (one handle call
per group: a call between deployments costs more CPU than a small map's inference). `infer_many` hands
each map to `infer`, a `@serve.batch` method: Serve gathers the maps of all callers (every ingress
replica, batch jobs) into one list, and `Predictor.predict` runs them as one vectorised pass even when
their map sizes, geometries and mc_samples differ (maps x MC samples per chunk bounded by `max_mc_work`).
Each map's dropout masks come from its own seed, so a result does not depend on its batch-mates.
Refinement (`refine=True`, seconds per map) would stall a shared batch, so refine maps form their own
batches in `refine`. Both batch kinds compute in worker threads, so the replica keeps accepting requests.
Batching knobs come from `user_config` (`PoolBatching`) through `reconfigure`, live.

Errors. Bad input (an `InputError` from the library) fails only its own map, as an `InferenceFailure`
that names the field. Any other exception is our fault: the batch is retried map by map, and a map that
still fails is reported as an internal failure (logged here), never as the client's.

Shared with the ingress: `InferenceItem` and `InferenceFailure` travel between them; `load_predictor`
and `run_items` also serve `lone_maps.LoneMaps`, which computes a lone map in the ingress with the
pool's code. The ingress's client of this deployment is `pool_client.PoolClient`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray import serve

from lensing.cosmology import MapGeometry
from lensing.limits import InputError
from lensing.pinn.predictor import Predictor, resolve_device

from .metrics import PredictorMetrics
from .settings import PINN_POOL_REPLICA, PoolBatching, PredictorSettings

logger = logging.getLogger("ray.serve")

BATCHING = PoolBatching()


@dataclass
class InferenceItem:
    """One map to infer, as it travels from the ingress to the pool (numpy, not JSON)."""

    kappa: np.ndarray
    geometry: MapGeometry
    mc_samples: int
    seed: int
    refine: bool = False
    noise_sigma: float | None = None  # None: estimated from the map
    symmetrize: bool = False  # pool the map's eight turned and mirrored views (8x the compute)


@dataclass
class InferenceFailure:
    """A per-map failure returned in place of a result, so one bad map cannot fail its batch-mates.

    `field` names the offending input when the client is at fault (an InputError); None: an internal fault.
    """

    message: str
    field: str | None = None

    @property
    def bad_input(self) -> bool:
        return self.field is not None


def load_predictor(settings: PredictorSettings, device: str) -> Predictor:
    """The Predictor the settings name (the package's weights by default), warmed up before traffic."""
    if settings.weights is not None and settings.card is not None:
        predictor = Predictor.from_files(settings.weights, settings.card, device=device)
    else:
        predictor = Predictor.from_package(device=device)
    predictor.predict([np.zeros((64, 64))], mc_samples=2, seed=0)
    return predictor


def predict_items(predictor: Predictor, items: list[InferenceItem], max_mc_work: int) -> list[dict | InferenceFailure]:
    """One vectorised call for the maps; if it raises, each map alone, so a failure stays its own."""
    try:
        return [*predictor.predict(
            [i.kappa for i in items], [i.geometry for i in items], mc_samples=[i.mc_samples for i in items],
            refine=[i.refine for i in items], seed=[i.seed for i in items], max_mc_work=max_mc_work,
            noise_sigma=[i.noise_sigma for i in items], symmetrize=[i.symmetrize for i in items])]
    except Exception as exc:  # noqa: BLE001 - sorted out map by map below
        if len(items) == 1:
            return [failure_of(exc)]
    return [result for item in items for result in predict_items(predictor, [item], max_mc_work)]


def failure_of(exc: Exception) -> InferenceFailure:
    """The client's fault for an InputError; ours (logged) for anything else."""
    if isinstance(exc, InputError):
        return InferenceFailure(str(exc), exc.field)
    logger.error("inference failed for one map: %s", type(exc).__name__, exc_info=exc)
    return InferenceFailure(f"inference failed: {type(exc).__name__}")


async def run_items(predictor: Predictor, items: list[InferenceItem], max_mc_work: int, metrics: PredictorMetrics,
                    device: str, computed_in: str) -> list[dict | InferenceFailure]:
    """Compute maps as one batch in a worker thread (so the replica keeps accepting requests), record the
    batch's metrics, and tag each result with how it was computed (the response's `serving`)."""
    started = time.perf_counter()
    results = await asyncio.to_thread(predict_items, predictor, items, max_mc_work)
    latency_ms = 1e3 * (time.perf_counter() - started)
    metrics.record_batch(device, [i.mc_samples for i in items], latency_ms)
    serving = {"batch_size": len(items), "device": device, "batch_ms": round(latency_ms, 3), "computed_in": computed_in}
    return [r if isinstance(r, InferenceFailure) else r | {"serving": serving} for r in results]


@serve.deployment(**PINN_POOL_REPLICA.deployment_options(user_config=BATCHING.model_dump()))
class PINNPredictor:
    def __init__(self, settings: PredictorSettings | None = None) -> None:
        settings = settings or PredictorSettings()
        self.device = resolve_device(settings.device)
        self.predictor = load_predictor(settings, self.device)
        self.config = BATCHING
        self.batch_sizes: Counter[int] = Counter()
        self._metrics = PredictorMetrics()

    def reconfigure(self, user_config: dict) -> None:
        """Apply a `PoolBatching` to the running replica (called by Serve on deploy and on changes)."""
        config = PoolBatching.model_validate(user_config)
        limit = serve.get_replica_context()._deployment_config.max_ongoing_requests
        if config.max_batch_size > limit:
            raise ValueError(f"max_batch_size ({config.max_batch_size}) must not exceed max_ongoing_requests "
                             f"({limit}): callers that send one map per call could never fill a batch")
        # @serve.batch adds these setters to the methods at run time; type checkers cannot see them
        self.infer.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self.infer.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.refine.set_max_batch_size(config.max_refine_batch_size)  # type: ignore[attr-defined]
        self.refine.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.config = config

    async def infer_stack(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Results of one request's stack of maps, in order: computed together as one batch of their own
        (a stack is a full batch already; splitting it into `infer` batches would only add per-batch cost)."""
        return await self._run_batch(items)

    async def infer_many(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Results of a group of maps, in order: each joins a shared batch (`infer` or `refine`)."""
        return await asyncio.gather(*(self.refine(item) if item.refine else self.infer(item) for item in items))

    @serve.batch(max_batch_size=BATCHING.max_batch_size, batch_wait_timeout_s=BATCHING.batch_wait_timeout_s)
    async def infer(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Infer a batch of maps without refinement (callers pass one `InferenceItem`)."""
        return await self._run_batch(items)

    @serve.batch(max_batch_size=BATCHING.max_refine_batch_size, batch_wait_timeout_s=BATCHING.batch_wait_timeout_s)
    async def refine(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Infer and refine a batch of refine=True maps, beside the `infer` batches rather than in them."""
        return await self._run_batch(items)

    async def _run_batch(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Compute a batch (`run_items`) and count its size for `settings()`."""
        self.batch_sizes[len(items)] += 1
        return await run_items(self.predictor, items, self.config.max_mc_work, self._metrics, self.device, "pool")

    def info(self) -> dict:
        """The model's identity and card summary (the HTTP layer shapes /api/v1/models from it), what each
        class means, and the device this replica computes on."""
        return self.predictor.info() | {"device": self.device, "loaded": True}

    def settings(self) -> dict:
        """Live batching settings and identity of this replica (for operators and tests)."""
        context = serve.get_replica_context()
        return {
            **self.config.model_dump(),
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
            "pid": os.getpid(),
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "replica_id": context.replica_id.unique_id,
            "batch_sizes": dict(self.batch_sizes),
        }
