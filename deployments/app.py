"""App builders named by the serve configs' `import_path` (their `args` become `AppSettings`).

`build_app` composes the whole service with `.bind()`: Ingress -> SyntheticGenerator, PINNPredictor,
JobStore (docs/design.md section 7). Replica counts, resources, autoscaling and the PINN pool's
`user_config` come from the config's `deployments` overrides, so one codebase serves the laptop
(serve_config.yaml) and the GPU cluster (configs/serve-gpu.yaml). `build_predictor_app` deploys the
PINN pool alone, for GPU placement checks and pool benchmarks through a DeploymentHandle.

No `from __future__ import annotations` here: Serve validates `args` into the builder's pydantic
annotation only when that annotation is a class, not a string.
"""

from ray.serve import Application

from .generator import SyntheticGenerator
from .ingress import Ingress
from .pinn_pool import PINNPredictor
from .settings import AppSettings, PredictorSettings
from .store import JobStore


def build_app(args: AppSettings) -> Application:
    """The full Lensing Serve application."""
    # Serve's decorator turns the classes into Deployments; type checkers still see the classes.
    return Ingress.bind(args, SyntheticGenerator.bind(), PINNPredictor.bind(args.predictor),  # type: ignore[attr-defined]
                        JobStore.bind(args.store_path))  # type: ignore[attr-defined]


def build_predictor_app(args: PredictorSettings) -> Application:
    """Only the PINN pool (no HTTP route; call it through `serve.get_app_handle`)."""
    return PINNPredictor.bind(args)  # type: ignore[attr-defined]
