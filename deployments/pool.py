"""The ingress's client of the PINN pool: the maps of concurrent requests go in one call per group.

The pool then batches maps across all its callers with `@serve.batch` (`PINNPredictor.infer`), and each
map keeps its own seed, so results never depend on the grouping (`grouping.GroupedCalls`).
"""

from __future__ import annotations

from ray.serve.handle import DeploymentHandle

from .grouping import GroupedCalls
from .predictor import InferenceFailure, InferenceItem


class PoolClient:
    """`infer(item)`: the pool's result for one map; raises what the call raised (a replica lost, say)."""

    def __init__(self, predictor: DeploymentHandle, max_group: int, in_flight: int) -> None:
        self._calls: GroupedCalls[InferenceItem, dict | InferenceFailure] = GroupedCalls(
            lambda items: predictor.infer_many.remote(items), max_group, in_flight)

    async def infer(self, item: InferenceItem) -> dict | InferenceFailure:
        return await self._calls.submit(item)
