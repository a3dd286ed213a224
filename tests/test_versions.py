"""Versions and the model summary over HTTP, without Ray: the app of one ingress replica (`create_app`) around
a stand-in service whose model info is the PINN pool's own `info()` on the shipped weights.

Each version is defined in one place (docs/design.md section 6): the package's in pyproject.toml (read
through importlib.metadata), the API's in `deployments/http/schemas.py`, the model's in its card.
"""

from __future__ import annotations

import importlib.metadata
import json
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import lensing
from deployments.http.api import create_app, model_summary
from deployments.http.schemas import API_VERSION, PACKAGE_VERSION
from deployments.settings import AppSettings

REPO = Path(__file__).resolve().parents[1]
CARD = json.loads((REPO / "lensing" / "weights" / "pinn_card.json").read_text())


@pytest.fixture(scope="module")
def pool_info() -> dict:
    """What the PINN pool's replicas answer to `info()`: its method, on the packaged Predictor (no replica)."""
    from deployments.pinn_pool import PINNPredictor
    from lensing.pinn.predictor import Predictor

    pool = object.__new__(PINNPredictor.func_or_class)
    pool.predictor, pool.device = Predictor.from_package(device="cpu"), "cpu"
    return pool.info()


class Service:
    """The narrow `Service` interface of `deployments.http.api`, enough for /, /health and /api/v1/models."""

    def __init__(self, model: dict | None) -> None:
        self.model = model

    async def startup(self) -> None: ...
    async def shutdown(self) -> None: ...
    def record(self, *row) -> None: ...

    async def model_info(self) -> dict | None:
        return self.model


@pytest.fixture(scope="module")
def client(pool_info) -> TestClient:
    with TestClient(create_app(Service(pool_info), AppSettings())) as client:  # type: ignore[arg-type]
        yield client


def test_the_package_version_is_pyprojects():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    installed = importlib.metadata.version("lensing-serve")
    assert installed == declared, (f"the installed metadata says {installed}, pyproject.toml {declared}: "
                                   "reinstall (pip install -e .) so that lensing.__version__ is current")
    assert lensing.__version__ == PACKAGE_VERSION == installed
    assert API_VERSION == "1"  # the /api/v1 paths


def test_health_and_root_report_each_version_under_its_name(client):
    health = client.get("/health")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["package_version"] == importlib.metadata.version("lensing-serve")
    assert body["version"] == body["package_version"]  # the original specification's field
    assert body["api_version"] == API_VERSION
    assert body["model_version"] == CARD["version"]
    root = client.get("/").json()
    assert {k: root[k] for k in ("version", "package_version", "api_version", "model_version")} == {
        k: body[k] for k in ("version", "package_version", "api_version", "model_version")}
    assert root["models"] == "/api/v1/models" and root["health"] == "/health"
    models = client.get("/api/v1/models").json()
    assert models["package_version"] == body["package_version"] and models["api_version"] == API_VERSION
    assert models["models"][0]["version"] == CARD["version"] and models["models"][0]["name"] == CARD["name"]
    assert client.get("/openapi.json").json()["info"]["version"] == body["package_version"]


def test_health_without_a_model_is_degraded_with_no_model_version():
    with TestClient(create_app(Service(None), AppSettings())) as client:  # type: ignore[arg-type]
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["model_version"] is None and health.json()["package_version"] == PACKAGE_VERSION
        assert client.get("/").json()["model_version"] is None
        assert client.get("/api/v1/models").json()["models"] == []


def test_models_is_a_small_summary_that_links_the_full_card(client):
    response = client.get("/api/v1/models")
    assert response.status_code == 200
    assert len(response.content) < 4096, f"/api/v1/models is {len(response.content)} bytes: keep it a summary"
    model = response.json()["models"][0]
    assert model["sha256"] == CARD["sha256"] and model["device"] == "cpu" and model["loaded"] is True
    assert model["input"]["size"] == model["input_size"] == [CARD["model_config"]["input_size"]] * 2
    assert model["input"]["accepted_sides"] == [16, 512] and "fov_kpc" in model["input"]["units"]
    assert set(model["output_units"]) == set(model["output_parameters"]) >= {"M_vir", "r_s", "ellipticity"}
    assert [c["name"] for c in model["classes"]] == model["class_names"] == ["CDM", "WDM", "SIDM", "none"]
    headline = model["metrics"]
    assert 0 < len(headline) <= 10 and all(headline[k] == CARD["metrics"][k] for k in headline)
    assert {"median_abs_dlog10_M", "scenario_accuracy"} <= set(headline)
    assert "sets" not in headline and "calibration" not in model  # those are the card's
    assert model["card_url"] == "/api/v1/models/card"
    card = client.get(model["card_url"])
    assert card.status_code == 200 and card.json() == CARD  # the full card, at the link
    assert len(card.content) > 2 * len(response.content)


def test_the_openapi_schema_describes_what_is_served(client):
    """Every field served by /, /health and /api/v1/models is in the OpenAPI document, and no other."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, name in (("/", "Root"), ("/health", "Health"), ("/api/v1/models", "Models")):
        assert set(client.get(path).json()) == set(schemas[name]["properties"]), path
    model = client.get("/api/v1/models").json()["models"][0]
    assert set(model) == set(schemas["ModelInfo"]["properties"])
    assert set(model["input"]) == set(schemas["ModelInput"]["properties"])


def test_class_descriptions_come_from_the_card(pool_info):
    described = pool_info | {"class_descriptions": {"CDM": "cold dark matter", "SIDM": "self-interacting"}}
    classes = model_summary(described).model_dump()["classes"]
    assert classes == [{"name": "CDM", "description": "cold dark matter"}, {"name": "WDM", "description": None},
                       {"name": "SIDM", "description": "self-interacting"}, {"name": "none", "description": None}]
    listed = pool_info | {"class_descriptions": ["cold", "warm", "self-interacting", "no substructure"]}
    assert [c["description"] for c in model_summary(listed).model_dump()["classes"]] == [
        "cold", "warm", "self-interacting", "no substructure"]
