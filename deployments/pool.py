"""Group calls from one ingress replica to the PINN pool: one DeploymentHandle call per group of maps.

A call between deployments costs milliseconds of CPU on both sides, more than a small map's share of a
PINN batch. So the ingress does not send each request on its own: a request finds up to `in_flight`
calls already under way, or starts one. While all are busy, new maps wait and leave together, at most
`max_group` per call, in the next call that frees up. A lone request is sent at once (no timer, no
added latency); under load the groups grow by themselves. The pool then batches maps across all its
callers with `@serve.batch` (`PINNPredictor.infer`), so results never depend on the grouping.
"""

from __future__ import annotations

import asyncio

from ray.serve.handle import DeploymentHandle

from .predictor import InferenceFailure, InferenceItem


class PoolClient:
    """`infer(item)` for the ingress: the pool's result for one map, sent in a group with its neighbours."""

    def __init__(self, predictor: DeploymentHandle, max_group: int, in_flight: int) -> None:
        self.predictor, self.max_group, self.in_flight = predictor, max_group, in_flight
        self._pending: list[tuple[InferenceItem, asyncio.Future]] = []
        self._senders: set[asyncio.Task] = set()

    async def infer(self, item: InferenceItem) -> dict | InferenceFailure:
        """The pool's result for one map; raises what the call raised (a replica lost, say)."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._senders) < self.in_flight:
            self._senders.add(asyncio.create_task(self._send()))
        return await future

    async def _send(self) -> None:
        """Send waiting maps until none wait; leaves the sender set in the same step as the last check."""
        try:
            while self._pending:
                group, self._pending = self._pending[: self.max_group], self._pending[self.max_group:]
                try:
                    results = await self.predictor.infer_many.remote([item for item, _ in group])
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(group, results):
                        if not future.done():  # a caller whose client went away has cancelled its future
                            future.set_result(result)
        finally:
            self._senders.discard(asyncio.current_task())
