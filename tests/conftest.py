"""A hardened deployment shared by tests/test_faults.py, test_schemathesis.py and test_ui.py (one cluster start).

`hardened` is session-scoped, but the last module that uses it closes it at its end (`release_hardened`),
so it does not stay up while later modules run their own clusters; a module that asks for it after that
gets a fresh one.
"""

from __future__ import annotations

import contextlib

import pytest

from harness.serve import LiveService, deployed, deployment

API_KEY = "shared-test-key-0123456789abcdef"


def harden(config: dict) -> None:
    """Keys required (from the environment of the application), a generous rate limit, two ingress and two
    PINN replicas (the availability set-up: a lost replica's twin serves while it is replaced), health
    checks every 2 s."""
    application = config["applications"][0]
    application["runtime_env"] = {"env_vars": {"LENSING_API_KEYS": API_KEY}}
    application["args"]["security"] = {"require_api_keys": True, "api_keys_env": "LENSING_API_KEYS",
                                       "rate_limit": {"requests_per_s": 1000, "burst": 2000}}
    # a killed replica is noticed at the controller's next health check: every 2 s here (default 10 s)
    ingress = deployment(config, "Ingress")
    ingress["num_replicas"] = 2  # one ingress replica cannot answer while it is replaced (startup: 10-40 s here)
    ingress["health_check_period_s"] = 2
    predictor = deployment(config, "PINNPredictor")
    predictor["health_check_period_s"] = 2
    predictor["num_replicas"] = 2
    predictor.setdefault("ray_actor_options", {})["num_cpus"] = 0.5


class SharedService:
    def __init__(self, workdir) -> None:
        self.workdir, self.stack, self.service = workdir, None, None
        self.failure: BaseException | None = None

    def get(self) -> LiveService:
        if self.failure is not None:  # one failed start is reported once per test, not retried by each
            raise RuntimeError(f"the shared deployment did not start: {self.failure!r}")
        if self.service is None:
            self.stack = contextlib.ExitStack()
            try:
                self.service = self.stack.enter_context(deployed(self.workdir, harden, timeout=360))
            except BaseException as exc:
                self.failure, self.stack = exc, None
                raise
        return self.service

    def close(self) -> None:
        if self.stack is not None:
            stack, self.stack, self.service = self.stack, None, None
            stack.close()


def _uses_hardened(item: pytest.Item) -> bool:
    return "hardened" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that use the shared hardened deployment one after another, from the first one's
    place, so that it starts once and no other module's cluster runs beside it."""
    sharing = {item.module for item in items if _uses_hardened(item)}
    if not sharing:
        return
    first = next(index for index, item in enumerate(items) if item.module in sharing)
    shared = [item for item in items if item.module in sharing]
    rest = [item for item in items if item.module not in sharing]
    items[:] = rest[:first] + shared + rest[first:]


@pytest.fixture(scope="session")
def _shared_hardened(tmp_path_factory):
    shared = SharedService(tmp_path_factory.mktemp("hardened"))
    yield shared
    shared.close()


@pytest.fixture
def hardened(_shared_hardened) -> LiveService:
    return _shared_hardened.get()


@pytest.fixture(scope="module")
def release_hardened(request, _shared_hardened):
    """Use in a module (autouse there) to close the shared deployment when no later test needs it."""
    yield
    items = request.session.items
    mine = [index for index, item in enumerate(items) if item.nodeid.startswith(request.node.nodeid + "::")]
    later = items[max(mine) + 1:] if mine else []
    if not any("hardened" in getattr(item, "fixturenames", ()) for item in later):
        _shared_hardened.close()
