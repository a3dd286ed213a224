"""Inference for /api/v1/inference (one map or a stack) and batch items: checks, seeds, the pool, job records.

The map arrives validated (`http/codecs.py`); here the request is checked against the loaded model
(target size), a dropout seed is drawn when the client gives none (and reported), and the map goes to
the PINN pool through the `PoolClient`. A pool failure that names a field is the client's (422); any
other is ours (`InternalFailure`, a 500 with the request id; batch items retry it). A stack goes to the
pool in one call and is recorded as one job; each map's failure stays its own entry.
"""

from __future__ import annotations

import uuid

import numpy as np

from lensing.cosmology import MapGeometry
from lensing.limits import InputError

from . import timing
from .http.errors import InternalFailure, InvalidInput, Unavailable, invalid_input
from .http.inference_body import InferenceInput
from .http.schemas import InferenceOptions, InferenceRequest
from .pinn_pool import InferenceFailure, InferenceItem
from .pool_client import PoolClient
from .recorder import JobRecorder
from .store import now_iso
from .synthesis import new_seed

REQUEST_FIELDS = InferenceRequest.model_fields


def failure_error(failure: InferenceFailure, loc: tuple[str | int, ...] = ()) -> Exception:
    """The exception of a pool failure: InvalidInput (at the field, under `loc`) or InternalFailure."""
    if failure.field is None:
        return InternalFailure(failure.message)
    return invalid_input(InputError(failure.field, failure.message), loc, REQUEST_FIELDS)


class Inference:
    """Runs maps through the pool and records the inference jobs."""

    def __init__(self, pool: PoolClient, recorder: JobRecorder) -> None:
        self.pool, self.recorder = pool, recorder

    async def model(self) -> dict:
        """The loaded model's summary, or Unavailable (503) while no pool replica answers."""
        model = await self.pool.model_info()
        if model is None:
            raise Unavailable("the model is not loaded yet; retry shortly")
        return model

    async def run(self, item: InferenceItem) -> dict:
        """The pool's result for one map (without the serving details), or the failure's exception."""
        with timing.stage("pool"):
            result = await self.pool.infer(item)
        if isinstance(result, InferenceFailure):
            raise failure_error(result)
        timing.add("model", result["serving"]["batch_ms"])
        return result

    async def infer(self, kappa: np.ndarray, options: InferenceOptions) -> dict:
        """/api/v1/inference for one map: run it, record the job, return the API response."""
        model = await self.model()
        item = self._item(kappa, options, model)
        seed = item.seed
        result = await self.run(item)
        job_id = uuid.uuid4().hex
        request = options.model_dump() | {"seed": seed, "map_shape": list(kappa.shape)}
        stored = {k: v for k, v in result.items() if k != "serving"}
        self.recorder.record(job_id, "inference", request, stored)
        return {"job_id": job_id, **result, "seed": seed,
                "model": {"name": model["name"], "version": model["version"]}, "timestamp": now_iso()}

    async def infer_stack(self, request: InferenceInput) -> dict:
        """/api/v1/inference for a stack: every valid map in one pool call, one entry per map (a result, or
        the 422/500 of that map), one job record; returns the API response (see `StackResponse`)."""
        model = await self.model()
        entries: list[dict] = [{"index": k, "status": 422, "detail": details} for k, details in request.errors.items()]
        items: list[tuple[int, InferenceItem]] = []
        for k, (kappa, options) in enumerate(zip(request.maps, request.options, strict=True)):
            if kappa is None or options is None:
                continue
            try:
                items.append((k, self._item(kappa, options, model)))
            except InvalidInput as exc:
                entries.append({"index": k, "status": 422, "detail": [
                    {"loc": ["body", k, *exc.loc], "msg": str(exc), "type": "value_error"}]})
        with timing.stage("pool"):
            results = await self.pool.infer_stack([item for _, item in items]) if items else []
        if done := [r for r in results if not isinstance(r, InferenceFailure)]:
            timing.add("model", done[0]["serving"]["batch_ms"])
        for (k, item), result in zip(items, results, strict=True):
            if isinstance(result, InferenceFailure):
                status = 422 if result.bad_input else 500
                detail = [{"loc": ["body", k, result.field or "convergence_map"], "msg": result.message,
                           "type": "value_error"}] if result.bad_input else "internal server error"
                entries.append({"index": k, "status": status, "seed": item.seed, "detail": detail})
            else:
                entries.append({"index": k, "status": 200, "seed": item.seed,
                                **{key: v for key, v in result.items() if key != "serving"}})
        entries.sort(key=lambda entry: entry["index"])
        job_id = uuid.uuid4().hex
        shapes = [list(kappa.shape) if kappa is not None else None for kappa in request.maps]
        self.recorder.record(job_id, "inference_stack", {"count": len(entries), "map_shapes": shapes}, {
            "results": entries})
        succeeded = sum(entry["status"] == 200 for entry in entries)
        return {"job_id": job_id, "count": len(entries), "succeeded": succeeded, "failed": len(entries) - succeeded,
                "results": entries, "model": {"name": model["name"], "version": model["version"]},
                "timestamp": now_iso()}

    @staticmethod
    def _item(kappa: np.ndarray, options: InferenceOptions, model: dict) -> InferenceItem:
        """The pool item of one checked map: the model's input size, a seed (drawn when none), its geometry."""
        size = model["input_size"][0]
        if options.target_size != size:
            raise InvalidInput(("target_size",), f"target_size must be {size}, the model's input size "
                               "(maps of any size 16..512 are resampled to it)")
        try:
            geometry = MapGeometry(options.fov_kpc, options.z_lens, options.z_source)
        except InputError as exc:
            raise invalid_input(exc, (), REQUEST_FIELDS) from None
        seed = options.seed if options.seed is not None else new_seed()
        return InferenceItem(kappa, geometry, options.mc_samples, seed, options.refine, options.noise_sigma,
                             options.symmetrize)
