"""Inference of one map for /api/v1/inference and batch items: checks, seed, the pool, the job record.

The map arrives validated (`http/codecs.py`); here the request is checked against the loaded model
(target size), a dropout seed is drawn when the client gives none (and reported), and the map goes to
the PINN pool through the `PoolClient`. A pool failure that names a field is the client's (422); any
other is ours (`InternalFailure`, a 500 with the request id; batch items retry it).
"""

from __future__ import annotations

import uuid

import numpy as np

from lensing.cosmology import MapGeometry
from lensing.limits import InputError

from .http.errors import InternalFailure, InvalidInput, Unavailable, invalid_input
from .http.schemas import InferenceRequest
from .pinn_pool import InferenceFailure, InferenceItem, PoolClient
from .recorder import JobRecorder
from .store import now_iso
from .synthesis import new_seed

REQUEST_FIELDS = InferenceRequest.model_fields


def raise_failure(failure: InferenceFailure, loc: tuple[str | int, ...] = ()) -> None:
    """Raise the exception of a pool failure: InvalidInput (at the field, under `loc`) or InternalFailure."""
    if failure.field is None:
        raise InternalFailure(failure.message)
    raise invalid_input(InputError(failure.field, failure.message), loc, REQUEST_FIELDS)


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
        result = await self.pool.infer(item)
        if isinstance(result, InferenceFailure):
            raise_failure(result)
        return result  # type: ignore[return-value]

    async def infer(self, kappa: np.ndarray, options) -> dict:
        """/api/v1/inference for one map: run it, record the job, return the API response."""
        model = await self.model()
        size = model["input_size"][0]
        if options.target_size != size:
            raise InvalidInput(("target_size",), f"target_size must be {size}, the model's input size "
                               "(maps of any size 16..512 are resampled to it)")
        seed = options.seed if options.seed is not None else new_seed()
        try:
            geometry = MapGeometry(options.fov_kpc, options.z_lens, options.z_source)
        except InputError as exc:
            raise invalid_input(exc, (), REQUEST_FIELDS) from None
        result = await self.run(InferenceItem(kappa, geometry, options.mc_samples, seed, options.refine))
        job_id = uuid.uuid4().hex
        request = options.model_dump() | {"seed": seed, "map_shape": list(kappa.shape)}
        stored = {k: v for k, v in result.items() if k != "serving"}
        await self.recorder.record(job_id, "inference", request, stored)
        return {"job_id": job_id, **result, "seed": seed,
                "model": {"name": model["name"], "version": model["version"]}, "timestamp": now_iso()}
