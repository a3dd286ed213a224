"""App builders named by the serve configs' `import_path` (their `args` become `AppSettings`).

`build_app` composes the whole service with `.bind()`: Ingress -> SyntheticGenerator, PINNPredictor,
JobStore (docs/design.md section 7). Replica counts, resources, autoscaling and the PINN pool's
`user_config` come from the config's `deployments` overrides, so one codebase serves the laptop
(serve_config.yaml) and the GPU cluster (configs/serve-gpu.yaml). `build_predictor_app` deploys the
PINN pool alone, for GPU placement checks and pool benchmarks through a DeploymentHandle.

The job store's URL is resolved here once, to check it (an unset `store_url_env` or an unknown scheme
fails the deploy with its reason) and to place JobStore: with SQLite on a cluster that offers the
`lensing_store` resource (the head node in cluster/), its one replica requests a share of it, so it runs
where the file's disk is (docs/design.md section 10). JobStore itself receives `store_url_env`, not the
URL, and reads the variable in its own environment.

No `from __future__ import annotations` here: Serve validates `args` into the builder's pydantic
annotation only when that annotation is a class, not a string.
"""

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from .generator import SyntheticGenerator
from .ingress import Ingress
from .pinn_pool import PINNPredictor
from .settings import JOB_STORE_REPLICA, STORE_RESOURCE, AppSettings, PredictorSettings
from .store.backend import Dialect, dialect_of
from .store.deployment import JobStore

# The share of the head's `lensing_store` resource JobStore requests: any share pins it to that node.
STORE_RESOURCE_SHARE = 0.01


def cluster_resources() -> Mapping[str, float]:
    """The cluster's resources, where a builder runs inside Ray (`serve deploy`); empty elsewhere."""
    import ray

    return ray.cluster_resources() if ray.is_initialized() else {}


def job_store_options(dialect: Dialect, resources: Mapping[str, float]) -> dict[str, Any]:
    """JobStore's `.options()`: one replica pinned to the store's node for SQLite on such a cluster."""
    if dialect != "sqlite":
        return {}
    options: dict[str, Any] = {"num_replicas": 1}
    if resources.get(STORE_RESOURCE):
        actor = JOB_STORE_REPLICA.deployment_options()["ray_actor_options"]
        options["ray_actor_options"] = actor | {"resources": {STORE_RESOURCE: STORE_RESOURCE_SHARE}}
    return options


def build_app(args: AppSettings) -> Application:
    """The full Lensing Serve application."""
    dialect = dialect_of(args.resolved_store_url())
    # Serve's decorator turns the classes into Deployments; type checkers still see the classes.
    store = JobStore.options(**job_store_options(dialect, cluster_resources())).bind(  # type: ignore[attr-defined]
        None if args.store_url_env else args.store_url, args.store_url_env, args.store_timeout_s)
    return Ingress.bind(args, SyntheticGenerator.bind(), PINNPredictor.bind(args.predictor),  # type: ignore[attr-defined]
                        store)


def build_predictor_app(args: PredictorSettings) -> Application:
    """Only the PINN pool (no HTTP route; call it through `serve.get_app_handle`)."""
    return PINNPredictor.bind(args)  # type: ignore[attr-defined]
