"""Ingress: the HTTP entry point of the application (docs/design.md section 7).

One job: hold the replica's lifecycle and wire the parts the routes use. The FastAPI app is built per
replica by `http.api.create_app` around this object, which serves the routes' `Service` interface by
handing each call to its part: `Synthesis` (maps), `Inference` (the PINN pool), `BatchJobs` (batches and
their background runner), `JobRecorder` (job records), `RequestStats` (counters), `PoolClient` (the
model's card summary), `LoneMaps` (a lone map computed here, not in the pool, when the settings say so).
The others talk to the other deployments through DeploymentHandles.
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from .batches import BatchJobs
from .generator import GeneratedMap
from .http.api import create_app
from .http.inference_body import InferenceInput
from .http.schemas import BatchRequest, InferenceOptions, SyntheticRequest
from .inference import Inference
from .lone_maps import LoneMaps
from .pool_client import PoolClient
from .recorder import JobRecorder
from .request_stats import RequestStats
from .settings import INGRESS_REPLICA, AppSettings
from .store.client import StoreClient
from .synthesis import Synthesis


@serve.deployment(**INGRESS_REPLICA.deployment_options())
@serve.ingress()
class Ingress:
    def __init__(self, settings: AppSettings, generator: DeploymentHandle, predictor: DeploymentHandle,
                 store: DeploymentHandle) -> None:
        # every part reaches the store through the client: timeouts, retries on a lost replica, StoreUnavailable
        self.settings, self.store = settings, StoreClient(store, timeout_s=2 * settings.store_timeout_s)
        recorder = JobRecorder(self.store)
        lone_maps = LoneMaps(settings.predictor) if settings.pool.lone_maps_in_ingress else None
        self.pool = PoolClient(predictor, settings.pool, lone_maps)
        self.synthesis = Synthesis(generator, recorder)
        self.inference = Inference(self.pool, recorder)
        self.batches = BatchJobs(self.store, recorder, self.synthesis, self.inference, settings.batch,
                                 settings.security.max_map_side)
        self.recorder = recorder
        self.request_stats = RequestStats(self.store, settings.stats_flush_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self, self.settings)

    # --- the routes' Service interface ---------------------------------------------------------------

    async def startup(self) -> None:
        self.batches.runner.start()
        self.request_stats.start()

    async def shutdown(self) -> None:
        await self.batches.runner.stop()
        await self.recorder.flush()
        await self.request_stats.stop()

    def record(self, endpoint: str, method: str, status: int, latency_ms: float, stages: dict[str, float]) -> None:
        self.request_stats.record(endpoint, method, status, latency_ms, stages)

    async def model_info(self) -> dict | None:
        return await self.pool.model_info()

    async def stats(self) -> dict:
        return await self.store.stats.remote()

    async def synthesize(self, spec: SyntheticRequest, fmt: str) -> tuple[str, GeneratedMap]:
        return await self.synthesis.synthesize(spec, fmt)

    async def infer(self, kappa: np.ndarray, options: InferenceOptions) -> dict:
        return await self.inference.infer(kappa, options)

    async def infer_stack(self, request: InferenceInput) -> dict:
        return await self.inference.infer_stack(request)

    async def submit_batch(self, spec: BatchRequest) -> dict:
        return await self.batches.submit(spec)

    async def batch_status(self, batch_id: str) -> dict:
        return await self.batches.status(batch_id)

    async def job(self, job_id: str) -> dict:
        return await self.recorder.job(job_id)
