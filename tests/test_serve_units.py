"""Serve building blocks without a cluster: the job store's lease protocol, content negotiation,
map checks, settings and both serve configs (valid for `serve run`/`serve deploy`, batching limits)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.batch_items import BatchItem, BatchOptions
from deployments.http.codecs import check_map, field_name, negotiate
from deployments.http.errors import InvalidInput
from deployments.pinn_pool import InferenceItem, PoolClient
from deployments.settings import AppSettings, PoolBatching, PoolCallSettings
from deployments.store import JobDatabase
from harness.serve import GPU_CONFIG, SERVE_CONFIG, deployment, effective_deployment, load_yaml
from lensing.cosmology import MapGeometry


def item(job_id: str, index: int = 0) -> BatchItem:
    return BatchItem(job_id=job_id, index=index, source="synthetic", seed=1, map_request={"M_vir": 1e12})


OPTIONS = BatchOptions(mc_samples=10, refine=False, base_seed=0)


class FakeClock:
    """A clock the test moves by hand, so lease expiry does not depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_store_runs_a_batch_to_completion_and_survives_reopening(tmp_path):
    path = tmp_path / "store.sqlite"
    db = JobDatabase(str(path))
    db.record_jobs([("s1", "synthetic", {"M_vir": 1e12, "seed": 3}, {"metadata": {}})])
    db.create_batch("b1", [item("i1", 0), item("i2", 1)], OPTIONS, owner="A", ttl=60)
    options, pending = db.pending_items("b1")
    assert options == OPTIONS and [p.index for p in pending] == [0, 1]
    db.finish_item("i1", result={"ok": 1})
    assert db.finalize_batch("b1") == "running"
    db.finish_item("i2", error="bad map")
    db.finish_item("i2", result={"late": 1})  # a finished item is never overwritten
    assert db.finalize_batch("b1") == "completed"
    status = JobDatabase(str(path)).batch_status("b1")  # a new connection sees everything
    assert (status["status"], status["completed"], status["failed"], status["progress"]) == ("completed", 1, 1, 100.0)
    assert status["results"][1]["error"] == "bad map" and status["error"] == "1 of 2 items failed"
    assert db.synthetic_requests(["s1", "i1", "nope"]) == {"s1": {"M_vir": 1e12, "seed": 3}}
    db.add_request_counts([("POST /x", 200, 2), ("POST /x", 422, 1)])
    db.add_request_counts([("POST /x", 200, 3)])
    stats = db.stats()
    assert stats["requests"] == {"POST /x": {"200": 5, "422": 1}}
    assert (stats["total_jobs"], stats["completed_jobs"], stats["failed_jobs"], stats["active_jobs"]) == (3, 2, 1, 0)
    assert db.get_job("nope") is None and db.batch_status("nope") is None


def test_store_leases_orphans_to_one_runner_and_fails_them_after_max_attempts(tmp_path):
    clock = FakeClock()
    db = JobDatabase(str(tmp_path / "store.sqlite"), clock=clock)
    db.create_batch("b1", [item("i1")], OPTIONS, owner="dead", ttl=0.05)
    assert db.claim_orphans("B", ttl=60, max_attempts=3) == []  # lease still valid
    clock.advance(0.1)
    assert db.renew("dead", ["b1"], ttl=0.05) == ["b1"]  # the owner may renew its own lease...
    clock.advance(0.1)
    assert db.claim_orphans("B", ttl=0.05, max_attempts=3) == ["b1"]  # ...until it lapses
    assert db.claim_orphans("C", ttl=60, max_attempts=3) == []  # B holds it now
    assert db.renew("dead", ["b1"], ttl=60) == []  # the old owner lost it
    clock.advance(0.1)
    assert db.claim_orphans("C", ttl=0.05, max_attempts=3) == ["b1"]  # third attempt (first was the creator's)
    clock.advance(0.1)
    assert db.claim_orphans("D", ttl=60, max_attempts=3) == []  # a fourth would exceed max_attempts
    status = db.batch_status("b1")
    assert status["status"] == "failed" and "abandoned" in status["error"]
    assert status["results"][0]["status"] == "failed" and "abandoned" in status["results"][0]["error"]


def test_store_release_hands_leases_over_without_counting_an_attempt(tmp_path):
    db = JobDatabase(str(tmp_path / "store.sqlite"))
    db.create_batch("b1", [item("i1")], OPTIONS, owner="A", ttl=60)
    db.release("A")  # a graceful shutdown
    for owner in ("B", "C", "D"):  # each graceful handover leaves the attempt count where it was
        assert db.claim_orphans(owner, ttl=60, max_attempts=2) == ["b1"]
        db.release(owner)
    assert db.batch_status("b1")["status"] == "queued"


@pytest.mark.parametrize("accept, expected", [
    (None, "application/json"), ("*/*", "application/json"), ("application/x-npy", "application/x-npy"),
    ("image/*", "image/png"), ("application/json;q=0.2, application/fits", "application/fits"),
    ("text/html", None), ("application/x-npy;q=0", None),
])
def test_negotiate(accept, expected):
    offered = ("application/json", "application/x-npy", "application/fits", "image/png")
    assert negotiate(accept, offered) == expected


def test_check_map_names_the_field():
    assert check_map([[0.0] * 16] * 16).shape == (16, 16)
    assert field_name(("maps", 2, "convergence_map")) == "maps[2].convergence_map"
    with pytest.raises(InvalidInput, match=r"maps\[2\].convergence_map must be 16..512") as error:
        check_map(np.zeros((8, 8)), ("maps", 2, "convergence_map"))
    assert error.value.loc == ("maps", 2, "convergence_map")
    with pytest.raises(InvalidInput, match="ragged"):
        check_map([[0.0] * 16] * 15 + [[0.0]])


@pytest.mark.parametrize("path", [SERVE_CONFIG, GPU_CONFIG], ids=["cpu", "gpu"])
def test_serve_configs_are_valid_and_batching_fits(path):
    config = load_yaml(path)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1"
    app = config["applications"][0]
    assert app["import_path"] == "deployments.app:build_app"
    AppSettings.model_validate(app["args"])
    pinn = effective_deployment(config, "PINNPredictor")
    batching = PoolBatching.model_validate(pinn["user_config"])
    assert pinn["max_ongoing_requests"] >= batching.max_batch_size
    assert effective_deployment(config, "JobStore")["num_replicas"] == 1


def test_gpu_config_uses_quarter_gpus_and_autoscaling():
    pinn = deployment(load_yaml(GPU_CONFIG), "PINNPredictor")
    assert pinn["ray_actor_options"]["num_gpus"] == 0.25 and pinn["autoscaling_config"]["max_replicas"] >= 4
    cpu = effective_deployment(yaml.safe_load(SERVE_CONFIG.read_text()), "PINNPredictor")
    assert cpu["ray_actor_options"]["num_gpus"] == 0


def test_gpu_config_lets_the_pool_autoscaler_see_the_load():
    """The pool autoscales on calls in flight; an ingress replica groups maps once `calls_in_flight` calls
    are under way. Below max_replicas x target_ongoing_requests calls the pool could never scale up."""
    config = load_yaml(GPU_CONFIG)
    autoscaling = deployment(config, "PINNPredictor")["autoscaling_config"]
    pool = AppSettings.model_validate(config["applications"][0]["args"]).pool
    assert pool.calls_in_flight >= autoscaling["max_replicas"] * autoscaling["target_ongoing_requests"]


def test_pool_client_sends_a_lone_map_at_once_and_groups_maps_that_wait():
    class FakePool:
        """Stands in for the DeploymentHandle: records each call's group, answers after a yield."""

        def __init__(self) -> None:
            self.groups: list[list[int]] = []
            self.infer_many = self

        def remote(self, items: list):
            self.groups.append([i.seed for i in items])

            async def answer() -> list:
                await asyncio.sleep(0.01)
                if any(i.seed < 0 for i in items):
                    raise RuntimeError("replica lost")
                return [{"seed": i.seed} for i in items]

            return answer()

    def item_(seed: int) -> InferenceItem:
        return InferenceItem(np.zeros((16, 16)), MapGeometry(), 1, seed)

    async def scenario() -> None:
        pool = FakePool()
        client = PoolClient(pool, PoolCallSettings(max_group=4, calls_in_flight=1))
        assert await client.infer(item_(0)) == {"seed": 0}
        assert pool.groups == [[0]]
        results = await asyncio.gather(*(client.infer(item_(k)) for k in range(1, 10)))
        assert results == [{"seed": k} for k in range(1, 10)]
        assert pool.groups[1:] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]  # at most max_group per call
        with pytest.raises(RuntimeError, match="replica lost"):
            await asyncio.gather(client.infer(item_(10)), client.infer(item_(-1)))

    asyncio.run(scenario())


def test_request_schemas_use_only_json_schema_keywords():
    """Pydantic writes a constraint it cannot attach to the type (e.g. bounds after a BeforeValidator) as
    its own `ge`/`le` keys, which JSON Schema ignores: clients and schemathesis would miss the bound."""
    from deployments.http.schemas import BatchRequest, InferenceOptions, InferenceRequest, SyntheticRequest

    def keys(node):
        if isinstance(node, dict):
            yield from node
            for value in node.values():
                yield from keys(value)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    for model in (SyntheticRequest, InferenceRequest, InferenceOptions, BatchRequest):
        found = {"ge", "le", "gt", "lt", "min_length", "max_length"} & set(keys(model.model_json_schema()))
        assert not found, (model.__name__, found)


def test_an_internal_error_in_the_model_is_not_the_clients_fault(monkeypatch):
    """A ValueError raised inside the network (a bug of ours, e.g. a shape mismatch) must come back as an
    internal failure (a 500 with a request id), never as a 422 blaming the client; a bad map stays a 422."""
    from fastapi.testclient import TestClient

    from deployments.http.api import create_app
    from deployments.http.errors import InternalFailure
    from deployments.inference import Inference
    from deployments.pinn_pool import InferenceFailure, PINNPredictor
    from lensing.pinn.predictor import Predictor

    pool = object.__new__(PINNPredictor.func_or_class)  # the replica's logic, without a Serve replica
    pool.predictor, pool.config = Predictor.from_package(device="cpu"), PoolBatching()
    good, bad = np.zeros((32, 32)) + 0.01, np.full((32, 32), np.nan)
    items = [InferenceItem(good, MapGeometry(), 5, 1), InferenceItem(bad, MapGeometry(), 5, 2)]
    ok, bad_input = pool._predict(items)
    assert isinstance(ok, dict) and isinstance(bad_input, InferenceFailure) and bad_input.field == "convergence_map"

    def broken(*args, **kwargs):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (64x3 and 4x256)")

    monkeypatch.setattr(pool.predictor.model.encoder, "forward", broken)
    failures = pool._predict(items[:1] * 2)
    assert all(isinstance(f, InferenceFailure) and not f.bad_input for f in failures)

    class FailingPool:
        async def infer(self, item):
            return failures[0]

        async def model_info(self):
            return {"name": "PINN", "version": "test", "input_size": [64, 64], "device": "cpu"}

    inference = Inference(FailingPool(), recorder=None)  # type: ignore[arg-type]
    with pytest.raises(InternalFailure):
        asyncio.run(inference.run(items[0]))

    class Service:
        async def startup(self) -> None: ...
        async def shutdown(self) -> None: ...
        def record(self, *row) -> None: ...
        async def model_info(self):
            return await FailingPool().model_info()
        async def infer(self, kappa, options):
            return await inference.infer(kappa, options)

    with TestClient(create_app(Service(), AppSettings()), raise_server_exceptions=False) as client:  # type: ignore[arg-type]
        response = client.post("/api/v1/inference", json={"convergence_map": good.tolist(), "mc_samples": 5})
    assert response.status_code == 500 and response.json()["detail"] == "internal server error"
    assert response.json()["request_id"], response.text


def test_job_records_are_written_behind_in_groups_and_survive_a_failed_write(tmp_path, monkeypatch):
    """`record` returns before the store write; a failed write keeps the records and retries; the replica
    reads its queued records back; a write repeated after a lost answer stores each job once."""
    from deployments import recorder as recorder_module
    from deployments.recorder import JobRecorder

    monkeypatch.setattr(recorder_module, "RETRY_PAUSE_S", (0.01, 0.02))
    db = JobDatabase(str(tmp_path / "store.sqlite"))

    class FlakyStore:
        """A handle stand-in over a real JobDatabase: the first write commits but its answer is lost."""

        def __init__(self) -> None:
            self.writes: list[int] = []
            self.record_jobs, self.get_job, self.synthetic_requests = (
                self._method(self._record), self._method(db.get_job), self._method(db.synthetic_requests))

        @staticmethod
        def _method(function):
            class Remote:
                @staticmethod
                async def remote(*args):
                    return function(*args)
            return Remote

        def _record(self, rows):
            self.writes.append(len(rows))
            db.record_jobs(rows)
            if len(self.writes) == 1:
                raise ConnectionError("the store replica died before answering")

    async def scenario() -> None:
        store = FlakyStore()
        recorder = JobRecorder(store)  # type: ignore[arg-type]
        for k in range(5):
            recorder.record(f"j{k}", "synthetic", {"M_vir": 1e12, "seed": k}, {"metadata": {}})
        assert (await recorder.job("j3"))["request"]["seed"] == 3  # queued, read back at once
        assert (await recorder.synthetic_requests(["j1", "nope"])) == {"j1": {"M_vir": 1e12, "seed": 1}}
        for _ in range(200):
            if not recorder._pending:
                break
            await asyncio.sleep(0.01)
        assert not recorder._pending and len(store.writes) >= 2  # written after the retry
        assert db.stats()["total_jobs"] == 5  # each job once, though the first group was written twice
        assert (await recorder.job("j4"))["kind"] == "synthetic"  # now from the store
        await recorder.flush()

    asyncio.run(scenario())
