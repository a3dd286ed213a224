"""Access control and input limits: the key store and token bucket alone, the middleware stack on a bare
FastAPI app, then the deployed app with keys (file and environment), a low rate limit and CORS on,
every request over HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.http import middleware
from deployments.http.errors import install_handlers
from deployments.http.security import KeyStore, RateLimiter, TokenBucket, parse_entries
from deployments.settings import AppSettings, RateLimitSettings, SecuritySettings
from harness.serve import MIB, LiveService, deployed, wait_until
from tests.rounding import close_up_to_round_off

KEY_FILE_RAW = "raw-key-in-file-0123456789"
KEY_FILE_HASHED = "hashed-key-in-file-0123456789"
KEY_ENV = "key-from-environment-0123456789"
KEY_LIMITED = "key-for-the-rate-limit-0123456789"
KEY_CLIENT = "key-of-the-python-client-0123456789"
ORIGIN = "https://allowed.example"
LIVE_RATE_LIMIT = {"requests_per_s": 2.0, "burst": 50}  # the live service's limits, per key or client address
TRACE_MARKERS = ("Traceback", 'File "', "site-packages", ".py\", line")


def sha256_line(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# --- without Ray -------------------------------------------------------------------------------------


def test_key_store_hashes_keys_and_identifies_them(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(f"# operators\n{sha256_line(KEY_FILE_HASHED)}  # alice\n{KEY_FILE_RAW}\n\n")
    monkeypatch.setenv("TEST_KEYS", f"{KEY_ENV}, {KEY_LIMITED}")
    store = KeyStore(SecuritySettings(api_keys_env="TEST_KEYS", api_keys_file=str(path)))
    assert store.enabled and len(store.digests) == 4
    assert all(isinstance(d, bytes) and len(d) == 32 for d in store.digests)  # digests only, no key kept
    assert KEY_FILE_RAW.encode() not in b"".join(store.digests)
    ids = {store.identify(k) for k in (KEY_FILE_RAW, KEY_FILE_HASHED, KEY_ENV, KEY_LIMITED)}
    assert None not in ids and len(ids) == 4
    for wrong in (None, "", KEY_ENV[:-1], KEY_ENV + "x", sha256_line(KEY_ENV), "x" * 10_000):
        assert store.identify(wrong) is None, wrong


def test_key_store_refuses_weak_entries_and_missing_required_keys(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least 16"):
        parse_entries("short", "test")
    with pytest.raises(ValueError, match="64 hex"):
        parse_entries("sha256:abc", "test")
    monkeypatch.delenv("NO_SUCH_KEYS", raising=False)
    with pytest.raises(RuntimeError, match="holds no API key"):
        KeyStore(SecuritySettings(require_api_keys=True, api_keys_env="NO_SUCH_KEYS"))
    with pytest.raises(RuntimeError, match="cannot be read"):
        KeyStore(SecuritySettings(api_keys_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="api_keys_env or api_keys_file"):
        SecuritySettings(require_api_keys=True)
    assert not KeyStore(SecuritySettings(api_keys_env="NO_SUCH_KEYS")).enabled  # configured but empty: open


def test_key_file_is_reloaded_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(KEY_FILE_RAW + "\n")
    store = KeyStore(SecuritySettings(api_keys_file=str(path)))
    monkeypatch.setattr("deployments.http.security.RELOAD_CHECK_S", 0.0)
    assert store.identify(KEY_FILE_RAW) and not store.identify(KEY_ENV)
    path.write_text(sha256_line(KEY_ENV) + "\n")
    import os
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert store.identify(KEY_ENV) and not store.identify(KEY_FILE_RAW)
    path.write_text("bad\n")  # a broken file keeps the keys we have
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert store.identify(KEY_ENV)


def test_token_bucket_and_limiter():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refills to burst, no more
    now = [0.0]
    limiter = RateLimiter(RateLimitSettings(requests_per_s=1.0, burst=2, max_clients=3), clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.acquire("b") == 0.0  # buckets are per identity
    for name in ("c", "d", "e"):
        limiter.acquire(name)
    assert len(limiter.buckets) == 3 and "a" not in limiter.buckets  # least recently seen dropped first


def bare_app(security: dict) -> tuple[TestClient, list]:
    """The real middleware stack and error handlers around two trivial routes (no Ray)."""
    app = FastAPI()
    install_handlers(app)
    recorded: list = []

    @app.get("/api/v1/ping")
    async def ping() -> dict:
        return {"ok": True}

    @app.get("/api/v1/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internal detail")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "healthy"}

    middleware.install(app, AppSettings(security=security), lambda *row: recorded.append(row))
    return TestClient(app, raise_server_exceptions=False), recorded


def test_middleware_order_cors_preflight_and_500s_without_traces(monkeypatch):
    monkeypatch.setenv("TEST_KEYS", KEY_ENV)
    # Buckets of 4 that refill only after ~1000 s: the counts below do not depend on how fast the test runs.
    # The client address's bucket takes the 401 and the three open-path requests; the key's the rest.
    client, recorded = bare_app({"api_keys_env": "TEST_KEYS", "cors_origins": [ORIGIN],
                                 "rate_limit": {"requests_per_s": 0.001, "burst": 4}})
    auth = {"Authorization": f"Bearer {KEY_ENV}"}
    preflight = client.options("/api/v1/ping", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                                        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    refused = client.get("/api/v1/ping", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200  # open, no key
    other = client.get("/health", headers={"Origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    boom = client.get("/api/v1/boom", headers=auth)
    assert boom.status_code == 500 and boom.json()["detail"] == "internal server error" and boom.json()["request_id"]
    assert "secret" not in boom.text and not any(m in boom.text for m in TRACE_MARKERS)
    limited = [client.get("/api/v1/ping", headers=auth) for _ in range(4)][-1]  # burst 4, one taken by boom
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    statuses = [row[2] for row in recorded]
    assert 401 in statuses and 429 in statuses and 500 in statuses  # rejected requests are still counted
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/api/v1/ping"]["get"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/api/v1/ping"]["get"]["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


# --- the deployed app --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> LiveService:
    workdir = tmp_path_factory.mktemp("security")
    key_file = workdir / "api_keys"
    key_file.write_text(f"{sha256_line(KEY_FILE_HASHED)}\n{KEY_FILE_RAW}\n{sha256_line(KEY_LIMITED)}\n"
                        f"{sha256_line(KEY_CLIENT)}\n")

    def secure(config: dict) -> None:
        application = config["applications"][0]
        application["runtime_env"] = {"env_vars": {"LENSING_TEST_KEYS": KEY_ENV}}
        application["args"]["security"] = {
            "require_api_keys": True, "api_keys_env": "LENSING_TEST_KEYS", "api_keys_file": str(key_file),
            "rate_limit": LIVE_RATE_LIMIT, "cors_origins": [ORIGIN], "max_map_side": 256}

    with deployed(workdir, secure) as service:
        yield service


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.slow  # a deployed app
def test_api_needs_a_valid_key_and_open_paths_stay_open(secured):
    for path in ("/", "/health", "/docs", "/openapi.json"):
        assert requests.get(secured.url(path), timeout=30).status_code == 200, path
    for path in ("/api/v1/models", "/api/v1/stats", "/api/v1/jobs/x", "/api/v1/batch/x/status"):
        missing = requests.get(secured.url(path), timeout=30)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer", path
        for wrong in (bearer("not-a-key-0123456789"), bearer(KEY_ENV + "x"), {"Authorization": KEY_ENV},
                      {"Authorization": f"Basic {KEY_ENV}"}, bearer(sha256_line(KEY_FILE_HASHED))):
            assert requests.get(secured.url(path), headers=wrong, timeout=30).status_code == 401, (path, wrong)
    spec = {"mass": 1e12, "grid_size": 32}
    assert requests.post(secured.url("/api/v1/synthetic"), json=spec, timeout=30).status_code == 401
    for key in (KEY_FILE_RAW, KEY_FILE_HASHED, KEY_ENV):  # file (raw and hashed) and environment
        response = requests.post(secured.url("/api/v1/synthetic"), json=spec, headers=bearer(key), timeout=60)
        assert response.status_code == 200, (key, response.text)
    assert requests.get(secured.url("/api/v1/models"), headers={"authorization": f"bearer {KEY_ENV}"},
                        timeout=30).status_code == 200  # scheme is case-insensitive
    document = requests.get(secured.url("/openapi.json"), timeout=30).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/inference"]["post"]["security"] == [{"bearer": []}]


@pytest.mark.slow  # a deployed app
def test_rate_limit_gives_429_with_retry_after_per_key(secured):
    url, headers = secured.url("/api/v1/models"), bearer(KEY_LIMITED)
    statuses = [requests.get(url, headers=headers, timeout=30).status_code for _ in range(90)]
    assert statuses[:40] == [200] * 40 and 429 in statuses, statuses  # within LIVE_RATE_LIMIT's burst
    refused = requests.get(url, headers=headers, timeout=30)
    assert refused.status_code == 429 and refused.json()["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert requests.get(url, headers=bearer(KEY_ENV), timeout=30).status_code == 200  # another key, another bucket
    time.sleep(retry_after)  # the bucket refills by then; a slow machine may need a moment more to answer
    assert wait_until(lambda: requests.get(url, headers=headers, timeout=30).status_code == 200, 10,
                      "the key was still refused after Retry-After")


@pytest.mark.slow  # a deployed app
def test_oversized_bodies_get_413(secured):
    url, headers = secured.url("/api/v1/inference"), bearer(KEY_FILE_RAW) | {"Content-Type": "application/x-npy"}
    oversized = b"0" * (8 * MIB + 1)
    assert requests.post(url, data=oversized, headers=headers, timeout=60).status_code == 413
    chunks = (oversized[i:i + MIB] for i in range(0, len(oversized), MIB))
    assert requests.post(url, data=chunks, headers=headers, timeout=60).status_code == 413
    assert requests.post(url, data=oversized, timeout=60).status_code == 401  # no key: refused before the body


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return buffer.getvalue()


def hostile_bodies() -> list[tuple[str, str, bytes]]:
    deep = "[" * 5000 + "]" * 5000
    return [
        ("malformed", "application/json", b'{"convergence_map": [[0.1, 0.2]'),
        ("deep-nesting", "application/json", f'{{"convergence_map": {deep}}}'.encode()),
        ("too-deep-map", "application/json", json.dumps({"convergence_map": [[[0.1] * 2] * 20] * 20}).encode()),
        ("over-max-side", "application/json", json.dumps({"convergence_map": [[0.1] * 300] * 300}).encode()),
        ("over-schema-side", "application/json", json.dumps({"convergence_map": [[0.1] * 4] * 600}).encode()),
        ("ragged", "application/json", json.dumps({"convergence_map": [[0.1] * 20] * 19 + [[0.1] * 3]}).encode()),
        ("huge-number", "application/json", b'{"convergence_map": [[1' + b"0" * 5000 + b"]]}"),
        ("not-utf8", "application/json", b"\xff\xfe\x00garbage"),
        ("npy-huge-header", "application/x-npy",
         b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"
         + b" " * 42 + b"\n"),
        ("npy-over-max-side", "application/x-npy", npy(np.zeros((300, 300)))),
        ("npy-4d", "application/x-npy", npy(np.zeros((2, 2, 32, 32)))),  # 3-D is a stack of maps
        ("npy-truncated", "application/x-npy", npy(np.zeros((32, 32)))[:200]),
        ("fits-garbage", "application/fits", b"SIMPLE  = T" + b" " * 5000),
    ]


@pytest.mark.slow  # a deployed app
@pytest.mark.parametrize("case", hostile_bodies(), ids=lambda c: c[0])
def test_hostile_inference_bodies_are_4xx_without_traces(secured, case):
    name, content_type, body = case
    response = requests.post(secured.url("/api/v1/inference"), data=body,
                             headers=bearer(KEY_FILE_HASHED) | {"Content-Type": content_type}, timeout=60)
    assert response.status_code in (413, 422), (name, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert not any(marker in response.text for marker in TRACE_MARKERS), response.text[:500]
    if name.endswith("max-side"):
        assert "256" in response.text  # the configured max_map_side, not the schema's 512


@pytest.mark.slow  # a deployed app
def test_cors_allows_only_the_configured_origin(secured):
    url = secured.url("/api/v1/models")
    preflight = requests.options(url, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                               "Access-Control-Request-Headers": "authorization"}, timeout=30)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    allowed = requests.get(url, headers=bearer(KEY_ENV) | {"Origin": ORIGIN}, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = requests.get(url, headers=bearer(KEY_ENV) | {"Origin": "https://evil.example"}, timeout=30)
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    assert requests.options(url, headers={"Origin": "https://evil.example",
                                          "Access-Control-Request-Method": "GET"}, timeout=30).status_code == 400


@pytest.mark.slow  # a deployed app
def test_open_paths_are_limited_per_client_address(secured):
    """Last: it empties this client's address bucket (open paths are limited per address)."""
    statuses = [requests.get(secured.url("/"), timeout=30).status_code for _ in range(90)]
    assert 429 in statuses, statuses
    # A request without a key is charged to the address before the 401. The bucket refills while the
    # requests run, so the bound is the token bucket's own: at most one leftover token plus rate x elapsed.
    started = time.monotonic()
    keyless = [requests.get(secured.url("/api/v1/models"), timeout=30).status_code for _ in range(10)]
    refilled = LIVE_RATE_LIMIT["requests_per_s"] * (time.monotonic() - started)
    assert set(keyless) <= {401, 429}, keyless
    assert keyless.count(401) <= 1 + refilled, (keyless, refilled)
    assert requests.get(secured.url("/api/v1/models"), headers=bearer(KEY_ENV), timeout=30).status_code == 200


# --- the Python client against this deployment (keys and a rate limit on) -----------------------------


def same_predictions(a: dict, b: dict) -> bool:
    """Equal up to float32 round-off (`tests/rounding.py`)."""
    return all(close_up_to_round_off(name, a["predictions"][name], value) for name, value in b["predictions"].items())


@pytest.mark.slow  # a deployed app
def test_client_generates_infers_and_runs_a_batch(secured, tmp_path):
    from lensing.client import APIError, Client

    client = Client(secured.base_url, api_key=KEY_CLIENT)
    kappa = client.synthetic_map(mass=2e12, scale_radius=150.0, seed=4)
    assert kappa.shape == (64, 64)
    full = client.synthetic(mass=2e12, scale_radius=150.0, seed=4)
    assert np.array_equal(full["convergence_map"], kappa) and full["parameters"]["M_vir"] == 2e12
    single = client.infer(kappa, mc_samples=10, seed=7)
    assert single["seed"] == 7 and single["predictions"]["M_vir"] == pytest.approx(2e12, rel=0.3)
    stack = client.infer([kappa, kappa], mc_samples=10, seed=[7, 8])
    assert [e["status"] for e in stack["results"]] == [200, 200]
    assert same_predictions(stack["results"][0], single)
    path = tmp_path / "halo.fits"
    client.synthetic_fits(path, mass=2e12, scale_radius=150.0, seed=4)
    from_file = client.infer(path, mc_samples=10, seed=7)  # the FITS NOISE card (0) gives the noise
    assert from_file["noise_sigma_source"] == "given" and from_file["noise_sigma"] == 0.0
    assert same_predictions(from_file, client.infer(kappa, mc_samples=10, seed=7, noise_sigma=0.0))
    batch = client.batch(synthetic=[{"mass": 1e12}, {"mass": 5e12}], mc_samples=5)
    status = client.wait(batch["batch_id"], timeout=120, progress=False)
    assert status["status"] == "completed" and status["progress"] == 100.0
    with pytest.raises(APIError) as error:
        client.infer(np.full((8, 8), 0.1))
    assert error.value.status == 422 and error.value.detail[0]["loc"] == ["body"]
    with pytest.raises(APIError) as error:
        Client(secured.base_url).models()
    assert error.value.status == 401


@pytest.mark.slow  # a deployed app
def test_client_waits_out_a_429_and_retries(secured):
    from lensing.client import Client

    url, headers = secured.url("/api/v1/models"), bearer(KEY_CLIENT)
    statuses = [requests.get(url, headers=headers, timeout=30).status_code for _ in range(80)]
    assert 429 in statuses  # the key's bucket is empty now
    client = Client(secured.base_url, api_key=KEY_CLIENT)
    assert client.models()["models"] and client.retries >= 1  # answered after Retry-After, not an error
