"""Every setting of the application and its default, in one place (docs/design.md section 7).

Three kinds, each a pydantic model whose defaults are the laptop configuration (`serve_config.yaml`
states only what differs from them, with a comment why; `configs/serve-gpu.yaml` the cluster's):
- `AppSettings`: the `args` block of the application, validated once by the app builder. Static: a
  change redeploys the replicas.
- `PoolBatching`: the PINN pool's `user_config`, applied to running replicas by `reconfigure`, so
  `serve deploy` retunes batching without a restart.
- `ReplicaDefaults`: the replica options each `@serve.deployment` decorator reads (CPUs, GPUs,
  requests in flight); the serve configs' `deployments` entries override them.
Access control and input-size limits are `SecuritySettings` (applied by `http/middleware.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .store.backend import dialect_of

MIB = 1024 * 1024


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicaDefaults(_Settings):
    """Options of one deployment's replicas when the serve config does not override them."""

    num_cpus: float = Field(ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_ongoing_requests: int = Field(ge=1)
    num_replicas: int = Field(1, ge=1)

    def deployment_options(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments of `@serve.deployment` (plus `extra`, e.g. a `user_config`)."""
        return {"num_replicas": self.num_replicas, "max_ongoing_requests": self.max_ongoing_requests,
                "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}, **extra}


# Logical CPUs sum to 1.6, so the whole app fits a 2-core laptop with room for the proxy and controller.
INGRESS_REPLICA = ReplicaDefaults(num_cpus=0.25, max_ongoing_requests=128)
GENERATOR_REPLICA = ReplicaDefaults(num_cpus=0.25, max_ongoing_requests=32)
# One replica, not autoscaled, on a laptop: a second 1-CPU replica would only split the same cores;
# batching is the lever there. max_ongoing_requests must be >= PoolBatching.max_batch_size.
PINN_POOL_REPLICA = ReplicaDefaults(num_cpus=1.0, max_ongoing_requests=64)
# One replica: the default SQLite backend owns its file (a PostgreSQL store may run several, set in the config).
JOB_STORE_REPLICA = ReplicaDefaults(num_cpus=0.1, max_ongoing_requests=256)
# The custom resource of the node whose disk holds a SQLite store (the head, in the cluster configs):
# with SQLite, JobStore requests a share of it wherever the cluster offers it.
STORE_RESOURCE = "lensing_store"
DEFAULT_STORE_URL = "sqlite:///~/.cache/lensing-serve/store.sqlite"
# Deployment name (in the serve configs) -> its defaults.
REPLICA_DEFAULTS = {"Ingress": INGRESS_REPLICA, "SyntheticGenerator": GENERATOR_REPLICA,
                    "PINNPredictor": PINN_POOL_REPLICA, "JobStore": JOB_STORE_REPLICA}


class PoolBatching(_Settings):
    """`user_config` of the PINN pool (PINNPredictor); applied live by `reconfigure`."""

    max_batch_size: int = Field(16, ge=1, description="most maps in one PINN batch (<= max_ongoing_requests)")
    max_refine_batch_size: int = Field(4, ge=1, description="most refine=true maps in one (separate) batch")
    # No wait on a CPU: the ingress already sends the maps of concurrent requests together, and under load
    # the next batch fills while one computes; a wait would only add latency (bench/http_load.py).
    batch_wait_timeout_s: float = Field(0.0, ge=0, description="how long a partial batch waits for more maps")
    max_mc_work: int = Field(4096, ge=1, description="maps x MC samples evaluated in one vectorised chunk")
    torch_threads: int | None = Field(1, ge=1, description="torch intra-op threads; null: Ray's OMP_NUM_THREADS")


class BatchJobSettings(_Settings):
    """Background processing of /api/v1/batch jobs."""

    max_items: int = Field(1000, ge=1, description="most items one batch may hold")
    concurrency: int = Field(8, ge=1, description="items in flight per ingress replica (they batch in the PINN pool)")
    lease_ttl_s: float = Field(15.0, gt=0, description="a runner that stops renewing for this long loses its batches")
    max_attempts: int = Field(3, ge=1, description="claims of one batch before it is marked failed")
    item_retries: int = Field(2, ge=0, description="retries of an item after an internal (non-input) error")


class StackLimits(_Settings):
    """How many maps one /api/v1/inference request may carry (a stack: npy (B, N, N), FITS cube, JSON list).

    Beyond either limit the request gets 413; the body-size limit (`max_body_bytes`) still applies."""

    max_maps: int = Field(256, ge=1, description="most maps in one request")
    max_pixels: int = Field(256 * 64 * 64, ge=256, description="most pixels (all maps together) in one request")


class PoolCallSettings(_Settings):
    """How an ingress replica groups the maps of concurrent requests into calls to the PINN pool."""

    max_group: int = Field(32, ge=1, description="most maps in one call to the pool")
    calls_in_flight: int = Field(
        2, ge=1, description="calls under way per ingress replica; further maps wait and go together in the next. "
        "The pool's autoscaler counts calls, not maps: with autoscaling, make this at least the pool's "
        "max_replicas x target_ongoing_requests, so maps are grouped only past that load")
    lone_maps_in_ingress: bool = Field(
        True, description="compute a plain map (no refine, no symmetrize) that arrives while this ingress replica's "
        "maps come one at a time in the ingress itself, with the pool's model and the map's seed: it has no batch "
        "to share, and the call to the pool costs ~6 ms on a laptop (deployments/lone_maps.py). Only while the "
        "pool computes on the CPU; false (GPU pools): every map goes to the pool and the ingress loads no model")


class PredictorSettings(_Settings):
    """How the PINN replicas load the model (changing it restarts them)."""

    device: str = Field("auto", description="'auto' (cuda if torch sees one, else cpu), 'cpu' or 'cuda'")
    weights: str | None = Field(None, description="safetensors file; default: the weights shipped in the package")
    card: str | None = Field(None, description="model card JSON matching `weights`")

    @model_validator(mode="after")
    def _weights_with_card(self) -> PredictorSettings:
        if (self.weights is None) != (self.card is None):
            raise ValueError("weights and card must be given together")
        return self


def store_url_of(url: str | None, url_env: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The store URL: `url`, or the value of the environment variable `url_env` (checked: set, a known scheme)."""
    if url_env is None:
        if url is None:
            raise ValueError("the job store needs store_url or store_url_env")
        return url
    value = environ.get(url_env, "").strip()
    if not value:
        raise ValueError(f"store_url_env: the environment variable {url_env} that should hold the job store's URL "
                         "is not set here (set it on every node, e.g. from a Kubernetes Secret)")
    try:
        dialect_of(value)
    except ValueError as exc:
        raise ValueError(f"store_url_env: ${url_env}: {exc}") from None
    return value


class RateLimitSettings(_Settings):
    """A token bucket per API key (per client address when keys are off): in Redis, shared by every ingress
    replica, when `redis_url`/`redis_url_env` name one; else in each ingress replica."""

    requests_per_s: float = Field(500.0, ge=0, description="sustained rate per key or client; 0 turns limiting off")
    burst: int = Field(1000, ge=1, description="bucket size: requests allowed at once after an idle period")
    max_clients: int = Field(10000, ge=1, description="buckets kept per replica; idle full ones are dropped first")
    redis_url: str | None = Field(None, description="redis://[:PASSWORD@]HOST:PORT/DB (or rediss://) holding the "
                                  "buckets of all ingress replicas; none: per-replica buckets in memory")
    redis_url_env: str | None = Field(None, description="environment variable holding the Redis URL instead")
    fail_closed: bool = Field(False, description="while Redis is unreachable answer 503 (true) instead of limiting "
                              "with per-replica buckets (false: fail open, counted in a metric and logged)")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return url

    @model_validator(mode="after")
    def _one_redis_source(self) -> RateLimitSettings:
        if self.redis_url and self.redis_url_env:
            raise ValueError("give rate_limit.redis_url or rate_limit.redis_url_env, not both")
        return self


class SecuritySettings(_Settings):
    """API keys, rate limits, CORS and input-size limits (README "Security")."""

    require_api_keys: bool = Field(False, description="refuse to start without at least one API key")
    api_keys_env: str | None = Field(None, description="environment variable holding keys, comma-separated")
    api_keys_file: str | None = Field(None, description="file of keys or sha256:HEX hashes, one per line")
    rate_limit: RateLimitSettings = RateLimitSettings()
    cors_origins: list[str] = Field([], description="origins allowed by CORS; empty: CORS off")
    max_map_side: int = Field(512, ge=16, le=512, description="largest map side (pixels) /inference and /batch accept")

    @model_validator(mode="after")
    def _keys_have_a_source(self) -> SecuritySettings:
        if self.require_api_keys and not (self.api_keys_env or self.api_keys_file):
            raise ValueError("require_api_keys needs api_keys_env or api_keys_file")
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("cors_origins: '*' must be the only entry")
        return self


class AppSettings(_Settings):
    """Arguments of `build_app` (the `args` of the application in the serve config)."""

    store_url: str = Field(DEFAULT_STORE_URL, description="the job store: sqlite:///PATH (embedded, one JobStore "
                           "replica) or postgresql://USER@HOST:PORT/DB (several replicas; docs/design.md section 10)")
    store_url_env: str | None = Field(None, description="environment variable holding the store URL instead of "
                                      "store_url: the way to give a URL with a password")
    store_timeout_s: float = Field(10.0, gt=0, description="a store call slower than this fails as unavailable "
                                   "(503): the database's statement timeout and the ingress's wait for the store")
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="larger request bodies get 413")
    stats_flush_s: float = Field(2.0, gt=0, description="how often ingress request counters reach the store")
    batch: BatchJobSettings = BatchJobSettings()
    predictor: PredictorSettings = PredictorSettings()
    pool: PoolCallSettings = PoolCallSettings()
    stacks: StackLimits = StackLimits()
    security: SecuritySettings = SecuritySettings()

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, url: str) -> str:
        dialect_of(url)
        return url

    @model_validator(mode="after")
    def _one_store_source(self) -> AppSettings:
        if self.store_url_env and "store_url" in self.model_fields_set:
            raise ValueError("give store_url or store_url_env, not both")
        return self

    def resolved_store_url(self, environ: Mapping[str, str] = os.environ) -> str:
        """The job store's URL (from `store_url_env` when it is set)."""
        return store_url_of(self.store_url, self.store_url_env, environ)
