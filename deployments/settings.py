"""Application settings: the `args` block of a serve config, validated once by the app builder.

Static settings live here (a change redeploys the replicas); the PINN pool's batching knobs live in
its `user_config` (`BatchingConfig`), which Serve applies to running replicas through `reconfigure`.
Access control and input limits (API keys, rate limits, CORS, map size) are `SecuritySettings`; the
middleware that applies them is in `middleware.py` and `security.py`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MIB = 1024 * 1024


class BatchJobSettings(BaseModel):
    """Background processing of /api/v1/batch jobs."""

    model_config = ConfigDict(extra="forbid")

    max_items: int = Field(1000, ge=1, description="most items one batch may hold")
    concurrency: int = Field(8, ge=1, description="items in flight per ingress replica (they batch in the PINN pool)")
    lease_ttl_s: float = Field(15.0, gt=0, description="a runner that stops renewing for this long loses its batches")
    max_attempts: int = Field(3, ge=1, description="claims of one batch before it is marked failed")
    item_retries: int = Field(2, ge=0, description="retries of an item after a transient (non-input) error")


class PoolCallSettings(BaseModel):
    """How an ingress replica groups the maps of concurrent requests into calls to the PINN pool (`pool.py`)."""

    model_config = ConfigDict(extra="forbid")

    max_group: int = Field(32, ge=1, description="most maps in one call to the pool")
    calls_in_flight: int = Field(
        2, ge=1, description="calls under way per ingress replica; further maps wait and go together in the next. "
        "The pool's autoscaler counts calls, not maps: with autoscaling, make this at least the pool's "
        "max_replicas x target_ongoing_requests, so maps are grouped only past that load")


class PredictorSettings(BaseModel):
    """How the PINN replicas load the model (changing it restarts them)."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", description="'auto' (cuda if torch sees one, else cpu), 'cpu' or 'cuda'")
    weights: str | None = Field(None, description="safetensors file; default: the weights shipped in the package")
    card: str | None = Field(None, description="model card JSON matching `weights`")

    @model_validator(mode="after")
    def _weights_with_card(self) -> "PredictorSettings":
        if (self.weights is None) != (self.card is None):
            raise ValueError("weights and card must be given together")
        return self


class RateLimitSettings(BaseModel):
    """A token bucket per API key (per client address when keys are off), in each ingress replica."""

    model_config = ConfigDict(extra="forbid")

    requests_per_s: float = Field(0.0, ge=0, description="sustained rate per key or client; 0 turns limiting off")
    burst: int = Field(100, ge=1, description="bucket size: requests allowed at once after an idle period")
    max_clients: int = Field(10000, ge=1, description="buckets kept per replica; idle full ones are dropped first")


class SecuritySettings(BaseModel):
    """API keys, rate limits, CORS and input-size limits (README "Security")."""

    model_config = ConfigDict(extra="forbid")

    require_api_keys: bool = Field(False, description="refuse to start without at least one API key")
    api_keys_env: str | None = Field(None, description="environment variable holding keys, comma-separated")
    api_keys_file: str | None = Field(None, description="file of keys or sha256:HEX hashes, one per line")
    rate_limit: RateLimitSettings = RateLimitSettings()
    cors_origins: list[str] = Field([], description="origins allowed by CORS; empty: CORS off")
    max_map_side: int = Field(512, ge=16, le=512, description="largest map side (pixels) /inference and /batch accept")

    @model_validator(mode="after")
    def _keys_have_a_source(self) -> "SecuritySettings":
        if self.require_api_keys and not (self.api_keys_env or self.api_keys_file):
            raise ValueError("require_api_keys needs api_keys_env or api_keys_file")
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("cors_origins: '*' must be the only entry")
        return self


class AppSettings(BaseModel):
    """Arguments of `build_app` (the `args` of the application in the serve config)."""

    model_config = ConfigDict(extra="forbid")

    store_path: str = Field("~/.cache/lensing-serve/store.sqlite", description="SQLite file of the job store")
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="larger request bodies get 413")
    stats_flush_s: float = Field(2.0, gt=0, description="how often ingress request counters reach the store")
    batch: BatchJobSettings = BatchJobSettings()
    predictor: PredictorSettings = PredictorSettings()
    pool: PoolCallSettings = PoolCallSettings()
    security: SecuritySettings = SecuritySettings()
