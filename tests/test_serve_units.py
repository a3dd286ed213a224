"""Serve building blocks without a cluster: the job store's lease protocol, content negotiation,
map checks, settings and both serve configs (valid for `serve run`/`serve deploy`, batching limits)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.codecs import check_map, field_name, negotiate
from deployments.errors import InvalidInput
from deployments.pool import PoolClient
from deployments.predictor import BatchingConfig, InferenceItem
from deployments.settings import AppSettings
from deployments.store import JobDatabase
from lensing.cosmology import MapGeometry
from tests.serve_harness import GPU_CONFIG, SERVE_CONFIG, deployment, load_yaml


def item(job_id: str) -> dict:
    return {"job_id": job_id, "source": "synthetic", "request": {"map_request": {"M_vir": 1e12}, "seed": 1}}


def test_store_runs_a_batch_to_completion_and_survives_reopening(tmp_path):
    path = tmp_path / "store.sqlite"
    db = JobDatabase(str(path))
    db.record_jobs([("s1", "synthetic", {"M_vir": 1e12, "seed": 3}, {"metadata": {}})])
    db.create_batch("b1", [item("i1"), item("i2")], {"mc_samples": 10}, owner="A", ttl=60)
    options, pending = db.pending_items("b1")
    assert options == {"mc_samples": 10} and [p["index"] for p in pending] == [0, 1]
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
    db = JobDatabase(str(tmp_path / "store.sqlite"))
    db.create_batch("b1", [item("i1")], {}, owner="dead", ttl=0.05)
    assert db.claim_orphans("B", ttl=60, max_attempts=3) == []  # lease still valid
    time.sleep(0.1)
    assert db.renew("dead", ["b1"], ttl=0.05) == ["b1"]  # the owner may renew its own lease...
    time.sleep(0.1)
    assert db.claim_orphans("B", ttl=0.05, max_attempts=3) == ["b1"]  # ...until it lapses
    assert db.claim_orphans("C", ttl=60, max_attempts=3) == []  # B holds it now
    assert db.renew("dead", ["b1"], ttl=60) == []  # the old owner lost it
    time.sleep(0.1)
    assert db.claim_orphans("C", ttl=0.05, max_attempts=3) == ["b1"]  # third attempt (first was the creator's)
    time.sleep(0.1)
    assert db.claim_orphans("D", ttl=60, max_attempts=3) == []  # a fourth would exceed max_attempts
    status = db.batch_status("b1")
    assert status["status"] == "failed" and "abandoned" in status["error"]
    assert status["results"][0]["status"] == "failed" and "abandoned" in status["results"][0]["error"]


def test_store_release_hands_leases_over_without_counting_an_attempt(tmp_path):
    db = JobDatabase(str(tmp_path / "store.sqlite"))
    db.create_batch("b1", [item("i1")], {}, owner="A", ttl=60)
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
    pinn = deployment(config, "PINNPredictor")
    batching = BatchingConfig.model_validate(pinn["user_config"])
    assert pinn["max_ongoing_requests"] >= batching.max_batch_size
    assert deployment(config, "JobStore")["num_replicas"] == 1


def test_gpu_config_uses_quarter_gpus_and_autoscaling():
    pinn = deployment(load_yaml(GPU_CONFIG), "PINNPredictor")
    assert pinn["ray_actor_options"]["num_gpus"] == 0.25 and pinn["autoscaling_config"]["max_replicas"] >= 4
    cpu = deployment(yaml.safe_load(SERVE_CONFIG.read_text()), "PINNPredictor")
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
        client = PoolClient(pool, max_group=4, in_flight=1)
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
    from deployments.schemas import BatchRequest, InferenceOptions, InferenceRequest, SyntheticRequest

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
