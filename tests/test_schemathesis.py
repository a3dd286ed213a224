"""Property-based API tests: schemathesis generates requests from the live /openapi.json (valid and
invalid ones) for every operation and checks every response against the document: no 5xx, documented
status codes, content types, headers and response schemas, and that requests without the API key are
refused. Each operation gets MAX_EXAMPLES schema-valid and MAX_EXAMPLES schema-invalid cases (fixed
seed), no deadline (the machine is shared and slow).

Runs on the hardened deployment shared with tests/test_faults.py (keys required, CORS off by default).
"""

from __future__ import annotations

import pytest
import requests

from deployments.http.schemas import PER_MAP_OPTIONS
from lensing.grid import DEFAULT_FOV_KPC
from lensing.limits import MAX_CENTER_FRACTION
from tests.conftest import API_KEY

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

pytestmark = pytest.mark.slow  # starts a Ray cluster

MAX_EXAMPLES = 15  # per operation and mode: 30 cases per operation
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module", autouse=True)
def _release(release_hardened):
    yield


OPERATIONS = [("GET", "/"), ("GET", "/health"), ("GET", "/api/v1/models"), ("GET", "/api/v1/stats"),
              ("POST", "/api/v1/synthetic"), ("POST", "/api/v1/inference"), ("POST", "/api/v1/batch"),
              ("GET", "/api/v1/batch/{batch_id}/status"), ("GET", "/api/v1/jobs/{job_id}"),
              ("GET", "/api/v1/models/card"), ("GET", "/api/v1/models/card/plots"),
              ("GET", "/api/v1/models/card/plots/{name}")]


@pytest.fixture(scope="module")
def api_schema(_shared_hardened):
    # Loaded from the live document. (schemathesis.pytest.from_fixture would do this, but its lazy loader
    # does not work with pytest 9, so each operation is driven through hypothesis here.)
    return schemathesis.openapi.from_url(_shared_hardened.get().url("/openapi.json"), timeout=30)


NO_INPUT = {("GET", "/"), ("GET", "/health"), ("GET", "/api/v1/models"), ("GET", "/api/v1/stats"),
            ("GET", "/api/v1/models/card"), ("GET", "/api/v1/models/card/plots")}
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if not (mode is GenerationMode.NEGATIVE and (m, p) in NO_INPUT)]  # nothing to make invalid there


def square_maps(value):
    """`value` with every convergence_map cut to a square (the document bounds rows and columns, 16..512,
    but cannot say that they are equal): the other shape rule JSON Schema cannot state."""
    if isinstance(value, list):
        return [square_maps(item) for item in value]
    if not isinstance(value, dict):
        return value
    value = dict(value)
    if _is_map(rows := value.get("convergence_map")):
        value["convergence_map"] = _square(rows)
    if isinstance(stack := value.get("convergence_maps"), list):
        value["convergence_maps"] = [_square(rows) if _is_map(rows) else rows for rows in stack]
    return {key: square_maps(item) for key, item in value.items()}


def _is_map(rows) -> bool:
    return isinstance(rows, list) and bool(rows) and all(isinstance(row, list) for row in rows)


def _square(rows: list) -> list:
    side = min(len(rows), *(len(row) for row in rows))
    return [row[:side] for row in rows[:side]]


def positive(case, input_size: int):
    """A schema-valid case made to follow the rules the document states only in words: square maps, and
    target_size equal to the served model's input size (it depends on the weights loaded)."""
    case.body = square_maps(case.body)
    for part in (case.body, case.query):
        if isinstance(part, dict) and "target_size" in part:
            part["target_size"] = input_size
    return case


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def follows_cross_field_rules(value, z_defaults=(0.5, 2.0), fov_default=DEFAULT_FOV_KPC) -> bool:
    """Whether every geometry in a request part (body, query) has z_source > z_lens and a halo centre
    within half the field of view (defaults filled in).

    Also that every per-map option list of a stack has one value per map. Rules the OpenAPI document cannot
    state (they compare fields); positive cases that break them are
    skipped here, and tests/test_serve_app.py and tests/test_validation.py check that they give a 422
    naming the field."""
    if isinstance(value, list):
        return all(follows_cross_field_rules(item) for item in value)
    if not isinstance(value, dict):
        return True
    maps = value.get("convergence_maps")
    count = len(maps) if isinstance(maps, list) else 1
    if any(isinstance(value.get(key), list) and len(value[key]) != count for key in PER_MAP_OPTIONS):
        return False  # a per-map option list gives one value per map of the stack
    z_lens, z_source = value.get("z_lens", z_defaults[0]), value.get("z_source", z_defaults[1])
    pairs = zip(z_lens if isinstance(z_lens, list) else [z_lens] * count,
                z_source if isinstance(z_source, list) else [z_source] * count)
    if any(_number(low) and _number(high) and high <= low for low, high in pairs):
        return False
    fov = value.get("fov_kpc", fov_default)
    for key in ("center_x_kpc", "center_y_kpc"):
        centre = value.get(key)
        if _number(centre) and _number(fov) and abs(centre) > MAX_CENTER_FRACTION * fov:
            return False
    return all(follows_cross_field_rules(item) for item in value.values())


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_api_conforms_to_its_openapi_document(api_schema, hardened, method, path, mode):
    operation = api_schema[path][method]
    models = requests.get(hardened.url("/api/v1/models"), headers=AUTH, timeout=30).json()["models"]
    model_input_size = models[0]["input_size"][0]

    cases = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        cases = cases.map(lambda case: positive(case, model_input_size)).filter(
            lambda case: follows_cross_field_rules(case.body) and follows_cross_field_rules(case.query))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case):
        case.call_and_validate(base_url=hardened.base_url, headers=AUTH, timeout=120)

    check()


def test_the_document_covers_every_operation_and_cors_is_off_by_default(hardened):
    document = requests.get(hardened.url("/openapi.json"), timeout=30).json()
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == set(OPERATIONS)
    for method, path in operations:
        responses = document["paths"][path][method.lower()]["responses"]
        assert "429" in responses, (method, path)
        assert ("401" in responses) == path.startswith("/api/v1/"), (method, path)
    response = requests.get(hardened.url("/api/v1/models"), headers=AUTH | {"Origin": "https://any.example"},
                            timeout=30)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = requests.options(hardened.url("/api/v1/models"), timeout=30, headers={
        "Origin": "https://any.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers
