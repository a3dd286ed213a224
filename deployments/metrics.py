"""Custom Prometheus metrics (ray.serve.metrics), created inside each replica.

Serve adds the deployment, replica, application and route tags; Ray exports them on each node's
metrics port with a `ray_` prefix (counters also with `_total`). Endpoint tags are route templates
(`/api/v1/jobs/{job_id}`), never raw paths, so ids cannot blow up the label cardinality.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0]
STAGE_MS = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0]
BATCH_SIZES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
MC_SAMPLES = [1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]


class IngressMetrics:
    """HTTP requests by endpoint, method and status code, and their latency."""

    def __init__(self) -> None:
        self.requests = Counter("lensing_requests", "HTTP requests by endpoint, method and status code",
                                tag_keys=("endpoint", "method", "status"))  # type: ignore[arg-type]  # Ray: tuple[str]
        self.latency_ms = Histogram("lensing_request_latency_ms", "HTTP request latency (ms) by endpoint",
                                    boundaries=LATENCY_MS, tag_keys=("endpoint",))
        self.stage_ms = Histogram("lensing_stage_latency_ms", "time (ms) of one stage of a request in the ingress "
                                  "(decode, pool call, model compute, encode, ...)", boundaries=STAGE_MS,
                                  tag_keys=("endpoint", "stage"))  # type: ignore[arg-type]  # Ray: tuple[str]

    def record(self, endpoint: str, method: str, status: int, latency_ms: float, stages: dict[str, float]) -> None:
        self.requests.inc(1, tags={"endpoint": endpoint, "method": method, "status": str(status)})
        self.latency_ms.observe(latency_ms, tags={"endpoint": endpoint})
        for stage, milliseconds in stages.items():
            self.stage_ms.observe(milliseconds, tags={"endpoint": endpoint, "stage": stage})


class PredictorMetrics:
    """PINN batches: size, latency, MC samples per map, maps inferred."""

    def __init__(self) -> None:
        self.batch_size = Histogram("lensing_pinn_batch_size", "requests per PINN batch",
                                    boundaries=BATCH_SIZES, tag_keys=("device",))
        self.latency_ms = Histogram("lensing_inference_latency_ms", "PINN batch inference latency (ms)",
                                    boundaries=LATENCY_MS, tag_keys=("device",))
        self.mc_samples = Histogram("lensing_mc_samples", "MC Dropout samples per inferred map",
                                    boundaries=MC_SAMPLES, tag_keys=("device",))
        self.maps = Counter("lensing_maps_inferred", "maps run through the PINN", tag_keys=("device",))

    def record_batch(self, device: str, mc_samples: list[int], latency_ms: float) -> None:
        tags = {"device": device}
        self.batch_size.observe(len(mc_samples), tags=dict(tags))
        self.latency_ms.observe(latency_ms, tags=dict(tags))
        for samples in mc_samples:
            self.mc_samples.observe(samples, tags=dict(tags))
        self.maps.inc(len(mc_samples), tags=dict(tags))


class GeneratorMetrics:
    """Synthetic maps generated, by profile, scenario and output format."""

    def __init__(self) -> None:
        self.maps = Counter("lensing_maps_generated", "synthetic maps generated",
                            tag_keys=("profile_type", "scenario", "format"))  # type: ignore[arg-type]  # Ray: tuple[str]

    def record(self, profile_type: str, scenario: str | None, fmt: str) -> None:
        self.maps.inc(1, tags={"profile_type": profile_type, "scenario": scenario or "none", "format": fmt})


class RateLimitMetrics:
    """Where an ingress replica's rate-limit buckets are: 1 for the backend in use ("redis" or "memory"), 0
    for the other; and how often it fell back from Redis to memory (README "Security")."""

    BACKENDS = ("redis", "memory")

    def __init__(self) -> None:
        self.in_use = Gauge("lensing_rate_limit_backend", "rate-limit buckets in use: 1 for redis or memory",
                            tag_keys=("backend",))
        self.fallbacks = Counter("lensing_rate_limit_fallbacks", "switches from Redis to per-replica buckets")

    def backend(self, backend: str, fallback: bool = False) -> None:
        for name in self.BACKENDS:
            self.in_use.set(1.0 if name == backend else 0.0, tags={"backend": name})
        if fallback:
            self.fallbacks.inc(1)
