"""The ingress's client of the PINN pool (docs/design.md section 7).

`PoolClient` (one per ingress replica) sends each map through `GroupedCalls` (one `infer_many` call per
group of concurrent maps), a stack in one `infer_stack` call, or hands a lone plain map to `LoneMaps` to
compute in the ingress itself; it caches the model card summary the pool reports.
"""

from __future__ import annotations

import asyncio
import time

from ray.serve.handle import DeploymentHandle

from .grouping import GroupedCalls
from .lone_maps import LoneMaps
from .pinn_pool import InferenceFailure, InferenceItem
from .settings import PoolCallSettings

MODEL_INFO_TTL_S = 30.0
MODEL_INFO_TIMEOUT_S = 10.0


class PoolClient:
    """The ingress's view of the pool: `infer(item)` for one map (grouped with its neighbours' maps into
    one call, or computed in this replica by `lone_maps` while its traffic is sequential), `model_info()` for
    the card summary (cached for MODEL_INFO_TTL_S, None while no replica answers). `infer` raises what the
    call raised (a replica lost, say)."""

    def __init__(self, pool: DeploymentHandle, settings: PoolCallSettings, lone_maps: LoneMaps | None = None) -> None:
        self._pool = pool
        self._calls: GroupedCalls[InferenceItem, dict | InferenceFailure] = GroupedCalls(
            lambda items: pool.infer_many.remote(items), settings.max_group, settings.calls_in_flight)
        self._lone_maps = lone_maps
        self._model: dict | None = None
        self._model_at = 0.0

    async def infer(self, item: InferenceItem) -> dict | InferenceFailure:
        """One map's result: computed in this replica when it is lone (`lone_maps`), else from the pool."""
        if self._lone_maps is None:
            return await self._calls.submit(item)
        with self._lone_maps.arriving() as lone:
            if lone and self._lone_maps.takes(item, self._model):
                return await self._lone_maps.infer(item)
            return await self._calls.submit(item)

    async def infer_stack(self, items: list[InferenceItem]) -> list[dict | InferenceFailure]:
        """The pool's results for one request's stack of maps, in one call."""
        return await self._pool.infer_stack.remote(items)

    async def model_info(self) -> dict | None:
        if self._model is None or time.monotonic() - self._model_at > MODEL_INFO_TTL_S:
            response = self._pool.info.remote()
            try:
                self._model = await asyncio.wait_for(asyncio.shield(response), MODEL_INFO_TIMEOUT_S)
                self._model_at = time.monotonic()
            except Exception:  # noqa: BLE001 - reported as not loaded
                response.cancel()
                return self._model
        return self._model
