"""Lone maps computed in the ingress, where a call to the pool would only add latency (docs/design.md section 7).

On a CPU the pool is there to batch the maps of concurrent requests. A map that reaches an ingress replica
whose traffic is sequential (no other map in flight, and none overlapping another during the last
`SEQUENTIAL_FOR_S`) has nothing to share a batch with, and the call to the pool (a second hop between
deployments: ~6 ms on a 2-core laptop, against ~8 ms of compute for a 64 x 64 map at mc_samples 10) is
pure overhead for it. With `pool.lone_maps_in_ingress` (the laptop default) the ingress loads the same
model and computes such a map itself, in a worker thread, with the pool's code and the map's own dropout
seed: the result is the pool's, up to float32 round-off. As soon as maps overlap, every map goes to the
pool for the next `SEQUENTIAL_FOR_S`: under load a lone map computed here would take CPU from the pool's
batches, which do the same work for less (measured: ~13 % fewer requests/s at concurrency 8 without it).

Taken here: plain maps only (refinement takes seconds and symmetrizing is 8x the compute: the pool's
batches are the place for them), and only while the pool reports the same model on the CPU (on a GPU
pool the ingress would compute on another device, so the GPU config turns this off and loads no model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .metrics import PredictorMetrics
from .pinn_pool import BATCHING, InferenceFailure, InferenceItem, load_predictor, run_items
from .settings import PredictorSettings

DEVICE = "cpu"
SEQUENTIAL_FOR_S = 1.0  # how long after two maps overlapped every map still goes to the pool


class LoneMaps:
    """`arriving()` around each map the ingress handles says whether it is lone; `takes(item, pool_model)`
    whether this one may run here; `infer(item)` its result, computed here."""

    def __init__(self, settings: PredictorSettings) -> None:
        self.predictor = load_predictor(settings, DEVICE)
        info = self.predictor.info()
        self.model = {"version": info["version"], "sha256": info["sha256"], "device": DEVICE}
        self._maps_in_flight = 0
        self._overlapped_at = -math.inf
        self._metrics = PredictorMetrics()

    @contextmanager
    def arriving(self) -> Iterator[bool]:
        """Count a map in flight for the block; yields True when the traffic is sequential (see module doc)."""
        now = time.monotonic()
        if self._maps_in_flight:
            self._overlapped_at = now
        self._maps_in_flight += 1
        try:
            yield now - self._overlapped_at > SEQUENTIAL_FOR_S
        finally:
            self._maps_in_flight -= 1

    def takes(self, item: InferenceItem, pool_model: dict | None) -> bool:
        """True for a plain map while the pool runs this same model on the CPU."""
        return (not item.refine and not item.symmetrize and pool_model is not None
                and all(pool_model.get(key) == value for key, value in self.model.items()))

    async def infer(self, item: InferenceItem) -> dict | InferenceFailure:
        [result] = await run_items(self.predictor, [item], BATCHING.max_mc_work, self._metrics, DEVICE, "ingress")
        return result
