"""Serve building blocks without a cluster: content negotiation, map checks, settings and both serve
configs (valid for `serve run`/`serve deploy`, batching limits). The job store's tests are tests/test_store.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.http.codecs import check_map, field_name, negotiate
from deployments.http.errors import InvalidInput
from deployments.pinn_pool import InferenceItem
from deployments.pool_client import PoolClient
from deployments.settings import AppSettings, PoolBatching, PoolCallSettings
from harness.serve import GPU_CONFIG, SERVE_CONFIG, deployment, effective_deployment, load_yaml
from lensing.cosmology import MapGeometry


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
    settings = AppSettings.model_validate(app["args"])
    if (settings.store_url_env is None and settings.store_url.startswith("sqlite")):  # one replica owns the file
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
    assert not pool.lone_maps_in_ingress  # a CPU ingress must not compute beside a GPU pool


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


def test_a_lone_plain_map_is_computed_in_the_ingress_and_the_rest_go_to_the_pool(monkeypatch):
    """`LoneMaps` takes a plain map while the ingress's traffic is sequential and the pool runs the same model
    on the CPU; once maps overlap, all go to the pool for SEQUENTIAL_FOR_S (its result equals the pool's up
    to round-off: checked live in tests/test_serve_app.py)."""
    from deployments import lone_maps as lone_maps_module
    from deployments.settings import PredictorSettings

    monkeypatch.setattr(lone_maps_module, "SEQUENTIAL_FOR_S", 0.2)
    lone_maps = lone_maps_module.LoneMaps(PredictorSettings())
    pool_model = dict(lone_maps.model)
    kappa = np.zeros((64, 64)) + 0.02

    def item_(seed: int, **options) -> InferenceItem:
        return InferenceItem(kappa, MapGeometry(), 5, seed, **options)

    assert lone_maps.takes(item_(0), pool_model)
    assert not lone_maps.takes(item_(0, refine=True), pool_model)
    assert not lone_maps.takes(item_(0, symmetrize=True), pool_model)
    assert not lone_maps.takes(item_(0), None)  # the pool has not answered yet
    assert not lone_maps.takes(item_(0), pool_model | {"device": "cuda"})
    assert not lone_maps.takes(item_(0), pool_model | {"version": "0.0.1"})

    class FakePool:
        def __init__(self) -> None:
            self.seeds: list[int] = []
            self.infer_many = self

        def remote(self, items: list):
            self.seeds += [i.seed for i in items]

            async def answer() -> list:
                await asyncio.sleep(0.01)
                return [{"seed": i.seed, "serving": {"computed_in": "pool"}} for i in items]

            return answer()

    async def where(client: PoolClient, item: InferenceItem) -> str:
        return (await client.infer(item))["serving"]["computed_in"]

    async def scenario() -> None:
        pool = FakePool()
        client = PoolClient(pool, PoolCallSettings(), lone_maps)
        client._model = pool_model  # as cached from the pool's info
        assert [await where(client, item_(k)) for k in (1, 2)] == ["ingress", "ingress"]  # one after another
        assert pool.seeds == []
        together = await asyncio.gather(*(where(client, item_(k)) for k in range(3, 7)))
        assert together == ["ingress", "pool", "pool", "pool"] and pool.seeds == [4, 5, 6]
        assert await where(client, item_(7)) == "pool"  # maps overlapped just now: the pool batches them
        assert await where(client, item_(8, refine=True)) == "pool"
        await asyncio.sleep(0.25)
        assert await where(client, item_(9)) == "ingress"  # sequential again
        assert await where(client, item_(10, refine=True)) == "pool"

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
    from deployments.pinn_pool import InferenceFailure, predict_items
    from lensing.pinn.predictor import Predictor

    predictor, max_mc_work = Predictor.from_package(device="cpu"), PoolBatching().max_mc_work
    good, bad = np.zeros((32, 32)) + 0.01, np.full((32, 32), np.nan)
    items = [InferenceItem(good, MapGeometry(), 5, 1), InferenceItem(bad, MapGeometry(), 5, 2)]
    ok, bad_input = predict_items(predictor, items, max_mc_work)
    assert isinstance(ok, dict) and isinstance(bad_input, InferenceFailure) and bad_input.field == "convergence_map"

    def broken(*args, **kwargs):
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (64x3 and 4x256)")

    monkeypatch.setattr(predictor.model.encoder, "forward", broken)
    failures = predict_items(predictor, items[:1] * 2, max_mc_work)
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

