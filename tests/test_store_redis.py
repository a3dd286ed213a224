"""Shared state in Redis: the rate limit's token buckets (deployments/http/security.py), on a real Redis
server (harness/redis.py: Debian's redis-server on a free port, stopped at the end).

Without Ray: two limiters (two ingress replicas) share one bucket per identity, taken atomically, so
together they allow the configured burst and rate, not twice it; buckets expire; while Redis is down the
limiter fails open to per-replica buckets (metric, one log line each way) or, if configured, closed (503);
it goes back to Redis by itself. Live (slow): the app with two ingress replicas, Redis from the environment
and the SQLite store pinned to the node with the `lensing_store` resource: the two replicas together allow
the rate; with Redis stopped each limits alone (about twice as many pass, none fails), and with Redis back
the limit is shared again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.http import security
from deployments.http.security import (
    RateLimiter,
    SharedRateLimiter,
    rate_limiter,
)
from deployments.settings import AppSettings, RateLimitSettings
from harness.redis import redis_server
from harness.serve import LiveService, deployed, deployment, replica_actors, wait_until

RATE = RateLimitSettings(requests_per_s=2.0, burst=10)


@pytest.fixture(scope="module")
def redis():
    with redis_server() as server:
        yield server


class Metrics:
    """Records what SharedRateLimiter reports (the real one is RateLimitMetrics, Ray's gauges)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.fallbacks = 0

    def backend(self, backend: str, fallback: bool = False) -> None:
        self.backends.append(backend)
        self.fallbacks += fallback


def allowed(waits: list[float]) -> int:
    return sum(wait == 0 for wait in waits)


def test_two_replicas_share_one_bucket_taken_atomically(redis):
    async def scenario() -> None:
        # a generous timeout: this test is about sharing, and 60 connections opened at once on a busy machine
        # can take longer than the production 0.25 s (that would fall back to local buckets, by design)
        replicas = [SharedRateLimiter(RATE, redis.url, timeout_s=10.0) for _ in range(2)]
        started = time.monotonic()
        waits = await asyncio.gather(*(replicas[k % 2].check("key:a") for k in range(60)))
        elapsed = time.monotonic() - started
        assert RATE.burst <= allowed(waits) <= RATE.burst + RATE.requests_per_s * elapsed + 1, (allowed(waits), elapsed)
        refused = [w for w in waits if w > 0]
        assert refused and all(0 < w <= 1 / RATE.requests_per_s + 1e-6 for w in refused)
        assert await replicas[0].check("key:b") == 0  # buckets are per identity
        # alone, each replica's own buckets would have let the burst through twice
        alone = [RateLimiter(RATE) for _ in range(2)]
        assert allowed([alone[k % 2].acquire("key:a") for k in range(60)]) == 2 * RATE.burst
        await asyncio.sleep(1 / RATE.requests_per_s + 0.05)  # one token refills
        assert allowed([await replicas[1].check("key:a"), await replicas[0].check("key:a")]) == 1

    asyncio.run(scenario())


def test_buckets_expire_once_they_would_be_full_again(redis):
    import redis as redis_py

    asyncio.run(SharedRateLimiter(RATE, redis.url, timeout_s=10.0).check("key:ttl"))
    client = redis_py.Redis.from_url(redis.url)
    ttl_ms = client.pttl(security.KEY_PREFIX + "key:ttl")
    assert 0 < ttl_ms <= 1000 * (RATE.burst / RATE.requests_per_s + 1)
    tokens = float(client.hget(security.KEY_PREFIX + "key:ttl", "tokens"))
    assert tokens == pytest.approx(RATE.burst - 1, abs=0.1)


def test_an_unreachable_redis_fails_open_to_per_replica_buckets_and_recovers(redis, monkeypatch, caplog):
    monkeypatch.setattr(security, "REDIS_RETRY_S", 0.2)
    metrics = Metrics()

    async def scenario() -> None:
        limiter = SharedRateLimiter(RATE, redis.url, metrics)
        assert await limiter.check("key:open") == 0 and limiter.backend == "redis"
        redis.stop()
        try:
            started = time.monotonic()
            waits = [await limiter.check("key:open") for _ in range(15)]
            assert time.monotonic() - started < 1.0  # refused at once, then the memory buckets decide
            assert limiter.backend == "memory" and allowed(waits) == RATE.burst  # this replica's own bucket
        finally:
            redis.start()
        await asyncio.sleep(0.3)
        await limiter.check("key:open")
        assert limiter.backend == "redis"

    with caplog.at_level(logging.INFO, logger="ray.serve"):
        asyncio.run(scenario())
    assert metrics.backends == ["redis", "memory", "redis"] and metrics.fallbacks == 1
    lines = [r.getMessage() for r in caplog.records if "rate limits" in r.getMessage()]
    assert len(lines) == 2 and "unreachable" in lines[0] and "reachable again" in lines[1], lines


def test_fail_closed_answers_503_while_redis_is_down(redis):
    settings = RATE.model_copy(update={"fail_closed": True, "redis_url": redis.url})
    app = FastAPI()

    @app.get("/api/v1/models")
    async def models() -> dict:
        return {"models": []}

    limiter = rate_limiter(settings)
    assert isinstance(limiter, SharedRateLimiter)
    guarded = security.AccessControl(app, keys=None, limiter=limiter)
    with TestClient(guarded) as client:  # type: ignore[arg-type]
        assert client.get("/api/v1/models").status_code == 200
        redis.stop()
        try:
            response = client.get("/api/v1/models")
            assert response.status_code == 503 and response.headers["Retry-After"] == "2", response.text
        finally:
            redis.start()
        limiter._retry_at = 0.0  # do not wait out the retry period
        assert client.get("/api/v1/models").status_code == 200


def test_rate_limit_settings_and_the_redis_url_from_the_environment(monkeypatch, caplog):
    with pytest.raises(ValueError, match="redis://"):
        RateLimitSettings(redis_url="http://cache:6379")
    with pytest.raises(ValueError, match="not both"):
        RateLimitSettings(redis_url="redis://a:6379/0", redis_url_env="LENSING_REDIS_URL")
    from_env = RateLimitSettings(redis_url_env="LENSING_REDIS_URL")
    shared = rate_limiter(from_env, environ={"LENSING_REDIS_URL": "redis://cache:6379/0"})
    assert isinstance(shared, SharedRateLimiter) and shared.url == "redis://cache:6379/0"
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert isinstance(rate_limiter(from_env, environ={}), RateLimiter)  # fail open: per-replica buckets
    assert "LENSING_REDIS_URL" in caplog.text
    with pytest.raises(RuntimeError, match="fail_closed"):
        rate_limiter(from_env.model_copy(update={"fail_closed": True}), environ={})
    with pytest.raises(RuntimeError, match="redis://"):
        rate_limiter(from_env, environ={"LENSING_REDIS_URL": "cache:6379"})
    assert isinstance(rate_limiter(RateLimitSettings()), RateLimiter)
    AppSettings.model_validate({"security": {"rate_limit": {"redis_url_env": "LENSING_REDIS_URL"}}})


# --- live: two ingress replicas -------------------------------------------------------------------------

LIVE_RATE = {"requests_per_s": 1.0, "burst": 12}


def shared_limits(redis_url: str):
    def change(config: dict) -> None:
        application = config["applications"][0]
        application["runtime_env"] = {"env_vars": {"LENSING_REDIS_URL": redis_url}}
        application["args"]["security"] = {"rate_limit": LIVE_RATE | {"redis_url_env": "LENSING_REDIS_URL"}}
        ingress = deployment(config, "Ingress")
        ingress["num_replicas"] = 2
        deployment(config, "PINNPredictor").setdefault("ray_actor_options", {})["num_cpus"] = 0.5

    return change


def burst_of_requests(service: LiveService, n: int = 48) -> tuple[int, float, list[int]]:
    """(requests answered 200, seconds taken, every status) for `n` requests from one address, back to back."""
    statuses = []
    started = time.monotonic()
    with requests.Session() as session:
        for _ in range(n):
            statuses.append(session.get(service.url("/"), timeout=30).status_code)
    return statuses.count(200), time.monotonic() - started, statuses


@pytest.mark.slow
def test_two_ingress_replicas_together_allow_the_rate(tmp_path, redis):
    rate, burst = LIVE_RATE["requests_per_s"], LIVE_RATE["burst"]
    from ray.util.state import list_actors

    with deployed(tmp_path, shared_limits(redis.url), num_cpus=3, resources='{"lensing_store": 1}',
                  timeout=360) as service:
        # the app is healthy once one ingress answers; the second may still be starting on 2 cores
        wait_until(lambda: len(replica_actors(service, "Ingress")) == 2, 180, "the second ingress did not start")
        [store] = list_actors(address=service.cluster.dashboard_url, detail=True, filters=[
            ("class_name", "=", "ServeReplica:lensing:JobStore"), ("state", "=", "ALIVE")])
        assert store.required_resources.get("lensing_store") == pytest.approx(0.01), store  # SQLite: pinned
        time.sleep(burst / rate)  # the health checks' requests drew on the bucket: let it fill

        shared, took, statuses = burst_of_requests(service)
        print(f"\nRedis up: {shared} of {len(statuses)} allowed in {took:.1f} s")
        assert set(statuses) <= {200, 429}
        assert shared <= burst + rate * took + 1, (shared, took)

        redis.stop()
        try:
            alone, took_alone, statuses = burst_of_requests(service)
            print(f"Redis down (fail open): {alone} of {len(statuses)} allowed in {took_alone:.1f} s")
            assert set(statuses) <= {200, 429}  # the service keeps serving
            assert alone > burst + rate * took_alone + 1, alone  # two replicas, two buckets: the limit doubles
        finally:
            redis.start()
        time.sleep(security.REDIS_RETRY_S + 0.5)  # each replica tries Redis again after this (it restarted empty)
        wait_until(lambda: requests.get(service.url("/"), timeout=10).status_code == 200, 30, "no answer")
        again, took_again, statuses = burst_of_requests(service)
        print(f"Redis back: {again} of {len(statuses)} allowed in {took_again:.1f} s")
        assert again <= burst + rate * took_again + 2, again
