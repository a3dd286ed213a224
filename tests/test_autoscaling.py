"""Autoscaling, live. Serve: load drives the PINN pool up, and it comes back down after the load stops.
Cluster nodes: PINN replicas that ask for a GPU make Ray's autoscaler start a GPU worker (Ray's fake
multi-node provider with cluster/fake_multinode.yaml), and it is released when the replicas are gone.

The app is serve_config.yaml (as the other live tests derive it) with the PINN pool autoscaled like
configs/serve-gpu.yaml, at test scale: 1..2 replicas of 0.5 CPU, a target of 2 ongoing requests per
replica and delays of seconds instead of minutes. Replicas push their metrics every 0.5 s instead of 10 s.
Replica counts come from the Ray dashboard's Serve REST API, as `serve status` reads them.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml

from harness.ray_head import free_port, local_ray_cluster
from harness.serve import (
    APP,
    GPU_CONFIG,
    REPO,
    LiveService,
    deploy_with_retry,
    deployment,
    healthy,
    load_yaml,
    make_config,
    wait_until,
)

pytestmark = pytest.mark.slow  # starts a Ray cluster

pytest.importorskip("ray")

NPY = "application/x-npy"
TEST_AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "look_back_period_s": 2,
}
CLIENTS = 8  # concurrent requests in flight: 8 / target 2 asks for 4 replicas, capped at max_replicas 2


def autoscaled_config(port: int, store) -> dict:
    config = make_config(port, store)
    shipped = deployment(load_yaml(GPU_CONFIG), "PINNPredictor")["autoscaling_config"]
    assert set(TEST_AUTOSCALING) - {"look_back_period_s"} <= set(shipped)  # the same knobs as the shipped pool
    predictor = deployment(config, "PINNPredictor")
    predictor.pop("num_replicas", None)  # serve_config.yaml may leave it at the code default
    predictor["autoscaling_config"] = dict(TEST_AUTOSCALING)
    predictor.setdefault("ray_actor_options", {})["num_cpus"] = 0.5  # two replicas and the rest of the app fit 2 CPUs
    # as in configs/serve-gpu.yaml: maps travel one per call until the pool's full range, so calls count maps,
    # and every map goes to the pool (none computed in the ingress)
    config["applications"][0]["args"]["pool"] = {
        "calls_in_flight": TEST_AUTOSCALING["max_replicas"] * TEST_AUTOSCALING["target_ongoing_requests"],
        "lone_maps_in_ingress": False}
    # small batches, so that requests wait in the replica (they count as ongoing) rather than all run at once
    predictor["user_config"].update(max_batch_size=2, batch_wait_timeout_s=0.0)
    return config


@pytest.fixture
def autoscaled(tmp_path) -> LiveService:
    workdir = tmp_path
    port = free_port()
    extra_env = {
        "PYTHONPATH": str(REPO),
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    }
    with local_ray_cluster(num_cpus=2, extra_env=extra_env) as cluster:
        config = autoscaled_config(port, workdir / "store.sqlite")
        service = LiveService(cluster, f"http://127.0.0.1:{port}", config, workdir / "serve.yaml")
        deploy_with_retry(cluster, config, service.config_path)
        wait_until(lambda: healthy(service.base_url), 240, "the app did not become healthy")
        yield service


def pool_details(service: LiveService, name: str = "PINNPredictor") -> dict:
    details = requests.get(f"{service.cluster.dashboard_url}/api/serve/applications/", timeout=10).json()
    return details["applications"][APP]["deployments"][name]


def running_replicas(service: LiveService, name: str = "PINNPredictor") -> int:
    return sum(replica["state"] == "RUNNING" for replica in pool_details(service, name)["replicas"])


def target_replicas(service: LiveService) -> int:
    """The autoscaler's decision (replicas may still be starting)."""
    return pool_details(service)["target_num_replicas"]


def test_load_scales_the_pinn_pool_up_and_idleness_scales_it_down(autoscaled):
    assert wait_until(lambda: running_replicas(autoscaled) == 1 or None, 60, "the pool did not start at 1 replica")
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.save(buffer, rng.uniform(0.01, 1.0, size=(64, 64)))
    body = buffer.getvalue()
    stop = threading.Event()
    answered = []

    def client(k: int) -> None:
        while not stop.is_set():
            response = requests.post(autoscaled.url("/api/v1/inference"), params={"mc_samples": 500, "seed": k},
                                     data=body, headers={"Content-Type": NPY}, timeout=120)
            assert response.status_code == 200, response.text
            answered.append(response.json()["serving"])

    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, k) for k in range(CLIENTS)]
        try:
            wait_until(lambda: target_replicas(autoscaled) == 2 or any(f.done() for f in futures), 120,
                       "load did not make the autoscaler ask for 2 PINN replicas")
            scaled_up_after = time.monotonic() - started
            wait_until(lambda: running_replicas(autoscaled) == 2 or any(f.done() for f in futures), 240,
                       "the autoscaler asked for a second PINN replica, but it did not start")
            # the scaled pool keeps answering (requests are routed to both replicas)
            before = len(answered)
            wait_until(lambda: len(answered) >= before + 4 * CLIENTS, 60, "no traffic after the scale-up", 0.2)
            under_load = running_replicas(autoscaled), target_replicas(autoscaled)
        finally:
            stop.set()
        for future in futures:
            future.result()  # a client's failure (non-200) fails the test here
    assert under_load == (2, 2), f"(running, target) under load: {under_load}; max_replicas is 2"

    stopped = time.monotonic()
    wait_until(lambda: target_replicas(autoscaled) == 1 and running_replicas(autoscaled) == 1 or None, 120,
               "the pool did not scale back down to 1")
    scaled_down_after = time.monotonic() - stopped  # from the last answer (the load fell while clients drained)
    print(f"scaled up after {scaled_up_after:.1f} s of load, down {scaled_down_after:.1f} s after it stopped")


# --- cluster nodes: Ray's autoscaler with the fake multi-node provider -------------------------------------

FAKE_CLUSTER = REPO / "cluster" / "fake_multinode.yaml"
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"  # ray.autoscaler._private.fake_multi_node.node_provider's head id


def alive_nodes(dashboard_url: str) -> list[dict]:
    nodes = requests.get(f"{dashboard_url}/nodes?view=summary", timeout=10).json()["data"]["summary"]
    return [n for n in nodes if n["raylet"]["state"] == "ALIVE"]


def gpu_workers(dashboard_url: str) -> list[dict]:
    return [n for n in alive_nodes(dashboard_url) if n["raylet"]["resourcesTotal"].get("GPU", 0) > 0]


def test_gpu_replicas_start_a_gpu_worker_node_and_it_goes_when_they_do(tmp_path):
    """Ray's autoscaler with the fake multi-node provider (cluster/fake_multinode.yaml): two 0.25-GPU PINN
    replicas that fit no node make it start a GPU worker (a second raylet on this machine), both run there,
    and the worker is released once they are gone. About 100 s on 2 cores."""
    config = yaml.safe_load(FAKE_CLUSTER.read_text())
    gpu_type = config["available_node_types"]["ray.worker.gpu"]
    assert gpu_type["min_workers"] == 0 and gpu_type["resources"]["GPU"] >= 1

    def autoscaling_args(gcs_port: int) -> list[str]:
        """The provider must know the head's GCS address before the head starts."""
        config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"
        path = tmp_path / f"fake_multinode-{gcs_port}.yaml"
        path.write_text(yaml.safe_dump(config))
        return [f"--autoscaling-config={path}"]

    extra_env = {
        "PYTHONPATH": str(REPO),
        "RAY_FAKE_CLUSTER": "1",               # required by the fake provider
        "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,  # the head the provider knows (use_node_id_as_ip)
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",   # autoscaler loop every second instead of 5
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        # fake workers are raylets of this machine that the autoscaler starts; if one outlives the head,
        # it exits 10 s after losing the GCS instead of 60 s
        "RAY_gcs_rpc_server_reconnect_timeout_s": "10",
    }
    with local_ray_cluster(num_cpus=2, extra_env=extra_env, extra_args=autoscaling_args) as cluster:
        assert gpu_workers(cluster.dashboard_url) == []
        gpu_options = deployment(load_yaml(GPU_CONFIG), "PINNPredictor")["ray_actor_options"]
        pool = {"applications": [{
            "name": "gpu-pool", "route_prefix": "/gpu-pool", "import_path": "deployments.app:build_predictor_app",
            "args": {"device": "auto"},
            "deployments": [{"name": "PINNPredictor", "num_replicas": 2,
                             "ray_actor_options": gpu_options | {"num_cpus": 0}}]}]}
        deploy_with_retry(cluster, pool, tmp_path / "pool.yaml")

        def pool_running():
            details = requests.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10).json()
            app = details["applications"].get("gpu-pool")
            return app and app["status"] == "RUNNING" and app

        try:
            app = wait_until(pool_running, 300, "the GPU pool did not run: no GPU worker was started")
        except TimeoutError:
            monitor_log = (cluster.session_dir() / "logs" / "monitor.log").read_text(errors="replace")
            if "Failed to launch" in monitor_log and "timed out during startup" in monitor_log:
                # The autoscaler did launch GPU workers, but each fake node's raylet must register within
                # Ray's fixed 30 s (ray._private.node.Node); on an overloaded machine it does not.
                pytest.skip("the autoscaler launched fake GPU workers, but their raylets did not start within "
                            "Ray's fixed 30 s on this overloaded machine (monitor.log: 'timed out during startup')")
            raise AssertionError(f"no GPU worker; the autoscaler's monitor.log ends:\n{monitor_log[-3000:]}") from None
        # the dashboard's node summary can list the new node a moment after the app is RUNNING
        [worker] = wait_until(lambda: gpu_workers(cluster.dashboard_url) or None, 60,
                              "the dashboard does not list the GPU worker the replicas run on")
        replica_nodes = {r["node_id"] for r in app["deployments"]["PINNPredictor"]["replicas"]}
        assert replica_nodes == {worker["raylet"]["nodeId"]}  # both 0.25-GPU replicas on the new GPU worker
        assert len(alive_nodes(cluster.dashboard_url)) == 2  # no CPU worker was needed

        deploy_with_retry(cluster, {"applications": []}, tmp_path / "pool.yaml")  # the replicas go away
        wait_until(lambda: gpu_workers(cluster.dashboard_url) == [] or None, 180,
                   "the idle GPU worker was not released")
        assert len(alive_nodes(cluster.dashboard_url)) == 1
