"""The sweep on Ray: a pool of long-lived worker actors, each running whole shards, fed by the driver.

Each `ShardWorker` actor loads the Predictor once, sets its torch threads, and for every shard it is
given does the whole shard in its own process (`sweep_pipeline.process_shard`: draw inputs, render,
infer, write Parquet); the driver only sends shard indices and gets back one small status dict per shard,
so maps never cross the object store. The driver keeps `shards_per_actor` shards in flight per running
actor (a threaded actor: one shard renders while another infers) and hands the next one to whichever
actor finishes first, so fast and slow actors stay busy to the end.

Startup is on the critical path of a short sweep, so the actors are requested first thing and load torch
and the weights while the driver checks the output; this module does not import torch (the actors do).

Failures: an exception in a shard is retried inside the actor (`max_attempts` tries). A worker process
that dies is restarted by Ray (`max_restarts=-1`) and its shard resubmitted up to `max_attempts - 1`
times (`max_task_retries`); a shard that still fails is reported, not raised, and the pool carries on.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable

from .sweep_config import STAGES

PAUSE_POLL_S = 0.5  # how often a paused sweep looks at its pause file


class ShardWorker:
    """A Ray actor: one Predictor for its lifetime, one shard per call, retried in place on error."""

    def __init__(self, config: dict, target: str) -> None:
        started = time.perf_counter()
        import torch  # here, not at module level: the driver imports this module without torch

        from lensing.pinn.predictor import Predictor

        from .sweep_config import SweepConfig
        from .sweep_pipeline import process_shard
        from .sweep_store import SweepStore

        self.config = SweepConfig.model_validate(config)
        torch.set_num_threads(self.config.execution.threads)
        self.store = SweepStore.open(target)
        self.predictor = Predictor.from_package(device="auto")
        self.process_shard = process_shard
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict:
        """The loaded model (name, version, sha256, calibration), device, threads and load time."""
        import torch

        info = self.predictor.info()
        model = {key: info.get(key) for key in ("name", "version", "sha256", "calibration")}
        return {"model": model, "device": info["device"], "threads": torch.get_num_threads(),
                "load_s": round(self.load_seconds, 3), "ready_at": time.time()}

    def run(self, shard: int) -> dict:
        """Process one shard with up to max_attempts tries; never raises, reports the last error."""
        attempts = self.config.execution.max_attempts
        error = ""
        for attempt in range(1, attempts + 1):
            try:
                seconds = self.process_shard(self.predictor, self.config, self.store, shard)
                return {"shard": shard, "ok": True, "attempts": attempt, "error": "", **seconds}
            except Exception as exc:  # noqa: BLE001 - any failure of one shard must not stop the others
                error = f"{type(exc).__name__}: {exc}"
                print(f"[sweep] shard {shard} attempt {attempt}/{attempts} failed: {error}", file=sys.stderr,
                      flush=True)
        return {"shard": shard, "ok": False, "attempts": attempts, "error": error, **dict.fromkeys(STAGES, 0.0)}


class WorkerPool:
    """`max` ShardWorker actors requested at once; shards go to whichever actors are running.

    Actors that do not fit the cluster yet stay pending (an autoscaling cluster adds nodes for them) and
    take work as soon as they start, so `actors: [min, max]` lets the pool grow with the cluster; the run
    starts on the first actor that is ready.
    """

    def __init__(self, config, target: str) -> None:
        import ray

        self.owns_ray = not ray.is_initialized()  # a caller's own Ray connection is left to the caller
        if self.owns_ray:
            ray.init(logging_level=logging.WARNING, log_to_driver=True)
        self.ray = ray
        execution = config.execution
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        options = {
            "num_cpus": execution.cpus_per_actor,
            "num_gpus": execution.gpus_per_actor if has_gpu else 0,
            "max_restarts": -1,  # a dead worker process is replaced ...
            "max_task_retries": execution.max_attempts - 1,  # ... and its shard resubmitted this often
            "max_concurrency": execution.shards_per_actor,  # a threaded actor: shards overlap inside it
        }
        self.slots = execution.shards_per_actor
        actor_class = ray.remote(ShardWorker).options(**options)
        payload = config.model_dump(mode="json")
        self.max_attempts = execution.max_attempts
        self.actors = [actor_class.remote(payload, target) for _ in range(execution.pool_size[1])]
        self.starting = {actor.info.remote(): actor for actor in self.actors}  # type: ignore[attr-defined]
        self.idle: deque = deque()
        self.first_info: dict | None = None
        self.start_errors: list[str] = []
        self.ready_at: list[float] = []  # wall-clock time each actor became ready

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - an actor whose constructor failed never takes work
            self.start_errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.first_info = self.first_info or info
        self.ready_at.append(info["ready_at"])
        self.idle.extend([actor] * self.slots)

    def first_ready(self) -> dict:
        """Wait for the first actor to load the model; its info() (raises if no actor can start)."""
        while self.first_info is None:
            if not self.starting:
                raise RuntimeError(f"no sweep worker could start: {self.start_errors[-1]}")
            [ref], _ = self.ray.wait(list(self.starting), num_returns=1)
            self._started(ref)
        return self.first_info

    def run(self, shards: list[int], on_result: Callable[[dict], None],
            paused: Callable[[], bool] = lambda: False) -> None:
        """Run `shards`, `shards_per_actor` in flight per running actor; call `on_result` with each shard's
        status dict.
        While `paused()` is true no new shard starts (those under way finish)."""
        queue = deque(shards)
        running: dict = {}  # object ref -> (actor, shard)
        while queue or running:
            while self.idle and queue and not paused():
                actor, shard = self.idle.popleft(), queue.popleft()
                running[actor.run.remote(shard)] = (actor, shard)
            if not running and not self.starting:
                if queue and paused():
                    time.sleep(PAUSE_POLL_S)
                    continue
                raise RuntimeError(f"no sweep worker could start: {self.start_errors[-1]}")
            [ref], _ = self.ray.wait([*running, *self.starting], num_returns=1)
            if ref in self.starting:
                self._started(ref)
                continue
            actor, shard = running.pop(ref)
            try:
                row = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the worker process died on every attempt
                row = {"shard": shard, "ok": False, "attempts": self.max_attempts,
                       "error": f"worker process died on every attempt ({type(exc).__name__})",
                       **dict.fromkeys(STAGES, 0.0)}
            self.idle.append(actor)
            on_result(row)

    def shutdown(self) -> None:
        """Stop the actors and leave Ray (if this pool joined it): the report needs neither, and a driver that
        disconnects itself exits about half a second sooner than one left to Ray's exit hook (measured on the
        bench's local head)."""
        for actor in self.actors:
            self.ray.kill(actor)  # type: ignore[arg-type]  # ray.remote(cls).options(...) is typed loosely
        if self.owns_ray:
            self.ray.shutdown()
