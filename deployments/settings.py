"""Application settings: the `args` block of a serve config, validated once by the app builder.

Static settings live here (a change redeploys the replicas); the PINN pool's batching knobs live in
its `user_config` (`BatchingConfig`), which Serve applies to running replicas through `reconfigure`.
Later hardening (API keys, rate limits, CORS) adds fields here and middleware in `middleware.py`.
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


class AppSettings(BaseModel):
    """Arguments of `build_app` (the `args` of the application in the serve config)."""

    model_config = ConfigDict(extra="forbid")

    store_path: str = Field("~/.cache/lensing-serve/store.sqlite", description="SQLite file of the job store")
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="larger request bodies get 413")
    stats_flush_s: float = Field(2.0, gt=0, description="how often ingress request counters reach the store")
    batch: BatchJobSettings = BatchJobSettings()
    predictor: PredictorSettings = PredictorSettings()
    pool: PoolCallSettings = PoolCallSettings()
