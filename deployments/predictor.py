"""PINNPredictor: the PINN pool, dynamic batching over HTTP requests (DESIGN.md section 7).

The ingress calls `infer_many(items)` with the maps of its concurrent requests (one handle call per
group, so the cost of a call between deployments is paid per group, not per map). `infer_many` hands
each map to `infer`, a `@serve.batch` method: Serve gathers the maps of all callers (every ingress
replica, batch jobs) into one list, and `Predictor.predict` runs them as one vectorised pass even when
their map sizes, geometries and mc_samples differ (maps x MC samples per chunk bounded by
`max_mc_work`). Each map's dropout masks come from its own seed, so a result does not depend on its
batch-mates. Refinement (`refine=True`, seconds per map) would stall a shared batch, so refine maps
form their own batches in `refine` (at most `max_refine_batch_size`, one such batch at a time). Both
batch kinds compute in worker threads, so the replica keeps accepting requests while torch computes.

Batch sizes, batch wait, MC-work bound and torch threads come from `user_config` (`BatchingConfig`)
through `reconfigure`, so `serve deploy` changes them on live replicas without a restart. A replica
asks for a GPU fraction in `ray_actor_options.num_gpus`; when torch sees no CUDA device (a CPU
machine, or a logical GPU without hardware) it computes on the CPU.
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
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lensing.pinn.predictor import MapGeometry, Predictor, resolve_device

from .metrics import PredictorMetrics
from .settings import PredictorSettings

logger = logging.getLogger("ray.serve")


class BatchingConfig(BaseModel):
    """`user_config` of PINNPredictor; applied live by `reconfigure`."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, description="most requests in one PINN batch (<= max_ongoing_requests)")
    max_refine_batch_size: int = Field(4, ge=1, description="most refine=true requests in one (separate) batch")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a partial batch waits for more requests")
    max_mc_work: int = Field(4096, ge=1, description="maps x MC samples evaluated in one vectorised chunk")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: Ray's OMP_NUM_THREADS")


@dataclass
class InferenceItem:
    """One map to infer, as it travels from the ingress to the pool (numpy, not JSON)."""

    kappa: np.ndarray
    geometry: MapGeometry
    mc_samples: int
    seed: int
    refine: bool = False


@dataclass
class InferenceFailure:
    """A per-item failure returned in place of a result, so one bad map cannot fail its batch-mates."""

    message: str
    bad_input: bool


@serve.deployment(
    max_ongoing_requests=64,
    user_config=BatchingConfig().model_dump(),
    ray_actor_options={"num_cpus": 1, "num_gpus": 0},
)
class PINNPredictor:
    def __init__(self, settings: PredictorSettings | None = None) -> None:
        settings = settings or PredictorSettings()
        self.device = resolve_device(settings.device)
        if settings.weights is not None:
            self.predictor = Predictor.from_files(settings.weights, settings.card, device=self.device)
        else:
            self.predictor = Predictor.from_package(device=self.device)
        self.config = BatchingConfig()
        self.batch_sizes: Counter[int] = Counter()
        self._metrics = PredictorMetrics()
        self.predictor.predict([np.zeros((64, 64))], mc_samples=2, seed=0)  # warm up torch before traffic

    def reconfigure(self, user_config: dict) -> None:
        """Apply a `BatchingConfig` to the running replica (called by Serve on deploy and on changes)."""
        config = BatchingConfig.model_validate(user_config)
        limit = serve.get_replica_context()._deployment_config.max_ongoing_requests
        if config.max_batch_size > limit:
            raise ValueError(f"max_batch_size ({config.max_batch_size}) must not exceed max_ongoing_requests "
                             f"({limit}): callers that send one map per call could never fill a batch")
        self.infer.set_max_batch_size(config.max_batch_size)
        self.infer.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.refine.set_max_batch_size(config.max_refine_batch_size)
        self.refine.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        self.config = config

    def _predict(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """One vectorised call for the batch; if it raises, each item alone so the failure stays its own."""
        try:
            return self.predictor.predict(
                [i.kappa for i in items], [i.geometry for i in items], mc_samples=[i.mc_samples for i in items],
                refine=[i.refine for i in items], seed=[i.seed for i in items], max_mc_work=self.config.max_mc_work)
        except Exception:
            if len(items) == 1:
                raise
        results: list[dict | InferenceFailure] = []
        for item in items:
            try:
                results.extend(self._predict([item]))
            except ValueError as exc:
                results.append(InferenceFailure(str(exc), bad_input=True))
            except Exception as exc:  # noqa: BLE001 - reported to that request only
                logger.exception("inference failed for one map")
                results.append(InferenceFailure(f"inference failed: {type(exc).__name__}", bad_input=False))
        return results

    async def infer_many(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Results of a group of maps, in order: each joins a shared batch (`infer` or `refine`)."""
        return await asyncio.gather(*(self.refine(item) if item.refine else self.infer(item) for item in items))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Infer a batch of maps without refinement (callers pass one `InferenceItem`)."""
        return await self._run_batch(items)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def refine(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Infer and refine a batch of refine=True maps, beside the `infer` batches rather than in them."""
        return await self._run_batch(items)

    async def _run_batch(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """Compute a batch in a worker thread; record its size and latency; tag results with the batch size."""
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._predict, items)
        except ValueError as exc:
            results = [InferenceFailure(str(exc), bad_input=True)]
        latency_ms = 1e3 * (time.perf_counter() - started)
        self.batch_sizes[len(items)] += 1
        self._metrics.record_batch(self.device, [i.mc_samples for i in items], latency_ms)
        serving = {"batch_size": len(items), "device": self.device}
        return [r if isinstance(r, InferenceFailure) else r | {"serving": serving} for r in results]

    def info(self) -> dict:
        """Model card summary for /api/v1/models, plus the device this replica computes on."""
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
