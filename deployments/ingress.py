"""Ingress: the HTTP entry point (FastAPI, built per replica by `api.create_app`) and its services.

It validates requests, draws and reports seeds (every result is reproducible), calls the generator
and the PINN pool through DeploymentHandles, and records every job in the store before answering, so
any replica can serve any job id (concurrent records share one store call: `JobRecorder`; concurrent
maps share one call to the pool: `PoolClient`). Small smooth maps as JSON or npy cost less to render
than a call to the generator, so the ingress renders those itself (`generator.renders_inline`); maps
with substructure, large maps, FITS, PNG and batch items go to the `SyntheticGenerator`. Batch jobs
are persisted first and then run by a `BatchRunner` in the background. Request counters go to
Prometheus at once and to the store every `stats_flush_s`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import Counter
from dataclasses import asdict

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from lensing.io import from_npy_bytes, to_npy_bytes
from lensing.cosmology import MapGeometry
from lensing.synthetic import MapRequest

from .api import create_app
from .batches import BatchRunner
from .codecs import check_map
from .errors import InvalidInput, Unavailable, UnknownId
from .generator import GeneratedMap, MapRenderer, renders_inline
from .metrics import IngressMetrics
from .pool import PoolClient
from .predictor import InferenceFailure, InferenceItem
from .recorder import JobRecorder
from .schemas import BatchRequest, InferenceOptions, SyntheticRequest
from .settings import AppSettings
from .store import now_iso

logger = logging.getLogger("ray.serve")

MODEL_INFO_TTL_S = 30.0
MODEL_INFO_TIMEOUT_S = 10.0
SEED_BITS = 32  # seeds stay exact in JavaScript clients


def new_seed() -> int:
    return secrets.randbits(SEED_BITS)


def map_request(spec: SyntheticRequest, seed: int, loc: tuple[str | int, ...] = ()) -> MapRequest:
    """The library request of an API spec; library errors become InvalidInput naming the field."""
    try:
        return MapRequest(
            profile_type=spec.profile_type, M_vir=spec.mass, scale_radius=spec.scale_radius,
            ellipticity=spec.ellipticity, position_angle=spec.position_angle, grid_size=spec.grid_size,
            fov_kpc=spec.fov_kpc, z_lens=spec.z_lens, z_source=spec.z_source, scenario=spec.scenario,
            seed=seed, noise_sigma=spec.noise_sigma,
        )
    except ValueError as exc:
        raise library_error(exc, loc) from None


def library_error(exc: Exception, loc: tuple[str | int, ...]) -> InvalidInput:
    """A 422 for an error of the physics core, at the field its message starts with when there is one."""
    field = str(exc).split(" ", 1)[0]
    field = "mass" if field == "M_vir" else field
    return InvalidInput((*loc, field) if field in SyntheticRequest.model_fields else loc, str(exc))


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class Ingress:
    def __init__(self, settings: AppSettings, generator: DeploymentHandle, predictor: DeploymentHandle,
                 store: DeploymentHandle) -> None:
        self.settings = settings
        self.generator, self.predictor, self.store = generator, predictor, store
        self.runner = BatchRunner(store, self.process_item, settings.batch)
        self.recorder = JobRecorder(store)
        self.pool = PoolClient(predictor, settings.pool.max_group, settings.pool.calls_in_flight)
        self.renderer = MapRenderer()
        self._metrics = IngressMetrics()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._flusher: asyncio.Task | None = None
        self._model: dict | None = None
        self._model_at = 0.0

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self, self.settings)

    # --- lifecycle and counters --------------------------------------------------------------------

    async def startup(self) -> None:
        self.runner.start()
        self._flusher = asyncio.create_task(self._flush_forever())

    async def shutdown(self) -> None:
        await self.runner.stop()
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush()

    def record(self, endpoint: str, method: str, status: int, latency_ms: float) -> None:
        """Middleware callback: one finished HTTP request."""
        self._metrics.record(endpoint, method, status, latency_ms)
        self._counts[(f"{method} {endpoint}", status)] += 1

    async def _flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            await self.store.add_request_counts.remote([(e, s, n) for (e, s), n in counts.items()])
        except Exception:  # noqa: BLE001 - keep them for the next flush
            self._counts.update(counts)
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_flush_s)
            try:
                await self._flush()
            except Exception:  # noqa: BLE001
                logger.exception("request counters not flushed; retrying")

    # --- model --------------------------------------------------------------------------------------

    async def model_info(self) -> dict | None:
        """The PINN's card summary (cached), or None while no replica answers."""
        if self._model is None or time.monotonic() - self._model_at > MODEL_INFO_TTL_S:
            response = self.predictor.info.remote()
            try:
                self._model = await asyncio.wait_for(asyncio.shield(response), MODEL_INFO_TIMEOUT_S)
                self._model_at = time.monotonic()
            except Exception:  # noqa: BLE001 - reported as not loaded
                response.cancel()
                return self._model
        return self._model

    # --- synthetic ----------------------------------------------------------------------------------

    async def synthesize(self, spec: SyntheticRequest, fmt: str) -> tuple[str, GeneratedMap]:
        """Generate a map, record the job (with its seed, so it can be regenerated) and return both."""
        request = map_request(spec, spec.seed if spec.seed is not None else new_seed())
        try:
            if renders_inline(request, fmt):
                generated = self.renderer.render(request, fmt)
            else:
                generated = await self.generator.generate.remote(request, fmt)
        except ValueError as exc:  # the physics core refused a combination the schema let through
            raise library_error(getattr(exc, "cause", exc), ()) from None  # Ray wraps a replica's error
        job_id = uuid.uuid4().hex
        metadata = {k: v for k, v in generated.map.metadata().items() if k != "request"}
        await self.recorder.record(job_id, "synthetic", asdict(request),
                                   {"metadata": metadata, "parameters": generated.map.parameters()})
        return job_id, generated

    # --- inference ----------------------------------------------------------------------------------

    async def infer(self, kappa, options: InferenceOptions) -> dict:
        """Run one map through the pool, record the job and return the API response."""
        model = await self.model_info()
        if model is None:
            raise Unavailable("the model is not loaded yet; retry shortly")
        if options.target_size != model["input_size"][0]:
            raise InvalidInput(("target_size",), f"target_size must be {model['input_size'][0]}, "
                               f"the model's input size (maps of any size 16..512 are resampled to it)")
        seed = options.seed if options.seed is not None else new_seed()
        item = InferenceItem(kappa, MapGeometry(options.fov_kpc, options.z_lens, options.z_source),
                             options.mc_samples, seed, options.refine)
        result = await self.pool.infer(item)
        if isinstance(result, InferenceFailure):
            if result.bad_input:
                raise InvalidInput(("convergence_map",), result.message)
            raise RuntimeError(result.message)
        job_id = uuid.uuid4().hex
        request = options.model_dump() | {"seed": seed, "map_shape": list(kappa.shape)}
        stored = {k: v for k, v in result.items() if k != "serving"}
        await self.recorder.record(job_id, "inference", request, stored)
        return {"job_id": job_id, **result, "seed": seed,
                "model": {"name": model["name"], "version": model["version"]}, "timestamp": now_iso()}

    # --- batches ------------------------------------------------------------------------------------

    async def submit_batch(self, batch: BatchRequest) -> dict:
        """Validate, persist (before acknowledging) and start a batch; returns the acknowledgement."""
        total = len(batch.job_ids) + len(batch.synthetic) + len(batch.maps)
        if total == 0:
            raise InvalidInput((), "a batch needs at least one item in job_ids, synthetic or maps")
        if total > self.settings.batch.max_items:
            raise InvalidInput((), f"a batch holds at most {self.settings.batch.max_items} items, got {total}")
        known = await self.store.synthetic_requests.remote(batch.job_ids)
        for index, job_id in enumerate(batch.job_ids):
            if job_id not in known:
                raise UnknownId(f"job_ids[{index}]: no synthetic job {job_id!r}")
        base_seed = batch.seed if batch.seed is not None else new_seed()
        items: list[dict] = []
        for job_id in batch.job_ids:
            items.append({"source": "job", "request": {"map_request": known[job_id], "source_job_id": job_id}})
        for index, spec in enumerate(batch.synthetic):
            request = map_request(spec, spec.seed if spec.seed is not None else new_seed(), ("synthetic", index))
            items.append({"source": "synthetic", "request": {"map_request": asdict(request)}})
        for index, entry in enumerate(batch.maps):
            kappa = check_map(entry.convergence_map, ("maps", index, "convergence_map"), self.settings.security.max_map_side)
            geometry = {"fov_kpc": entry.fov_kpc, "z_lens": entry.z_lens, "z_source": entry.z_source}
            items.append({"source": "map", "request": {"geometry": geometry, "map_shape": list(kappa.shape)},
                          "input": to_npy_bytes(kappa)})
        for index, item in enumerate(items):
            item["job_id"] = uuid.uuid4().hex
            item["request"]["seed"] = (base_seed + index) % 2**63
        batch_id = uuid.uuid4().hex
        options = {"mc_samples": batch.mc_samples, "refine": batch.refine, "base_seed": base_seed}
        await self.store.create_batch.remote(batch_id, items, options, self.runner.owner,
                                             self.settings.batch.lease_ttl_s)
        self.runner.run(batch_id)
        return {"batch_id": batch_id, "message": f"Batch job submitted with {total} items",
                "status_url": f"/api/v1/batch/{batch_id}/status", "total": total,
                "job_ids": [item["job_id"] for item in items]}

    async def process_item(self, options: dict, item: dict) -> dict:
        """One batch item: (re)generate its map if synthetic, infer it; the truth rides along."""
        request = item["request"]
        truth = None
        if item["source"] == "map":
            kappa = from_npy_bytes(item["input"])
            geometry = MapGeometry(**request["geometry"])
        else:
            spec = MapRequest(**request["map_request"])
            generated: GeneratedMap = await self.generator.generate.remote(spec)
            kappa, truth = generated.map.convergence, generated.map.parameters()
            geometry = MapGeometry(spec.fov_kpc, spec.z_lens, spec.z_source)
        result = await self.pool.infer(
            InferenceItem(kappa, geometry, options["mc_samples"], request["seed"], options["refine"]))
        if isinstance(result, InferenceFailure):
            raise (ValueError if result.bad_input else RuntimeError)(result.message)
        result = {k: v for k, v in result.items() if k != "serving"} | {"seed": request["seed"]}
        return {"truth": truth, **result} if truth is not None else result

    async def job(self, job_id: str) -> dict:
        record = await self.store.get_job.remote(job_id)
        if record is None:
            raise UnknownId(f"no job {job_id!r}")
        return record

    async def batch_status(self, batch_id: str) -> dict:
        status = await self.store.batch_status.remote(batch_id)
        if status is None:
            raise UnknownId(f"no batch {batch_id!r}")
        return status
