"""Observability, live: a real Prometheus (Debian's package) scrapes a private Ray cluster running the app.

The Prometheus config is configs/prometheus.yml with the discovery file moved to the test cluster's temp dir
and a 2 s scrape interval; the Ray head is started with RAY_PROMETHEUS_HOST pointing at that Prometheus, as the
README tells operators to. Every PromQL expression of configs/grafana/lensing-dashboard.json must return data.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from harness.ray_head import free_port, local_ray_cluster, stop_process
from harness.serve import REPO, LiveService, deploy_with_retry, healthy, make_config, wait_until

pytestmark = pytest.mark.slow  # starts a Ray cluster

PROMETHEUS_CONFIG = REPO / "configs" / "prometheus.yml"
DASHBOARD = REPO / "configs" / "grafana" / "lensing-dashboard.json"
DISCOVERY_FILE = "prom_metrics_service_discovery.json"
NPY = "application/x-npy"
# Series that only NVIDIA hardware produces (Ray's agent reads them through NVML).
PHYSICAL_GPU_METRICS = ("ray_node_gpus_utilization", "ray_node_gpus_available", "ray_node_gram_used",
                        "ray_node_gram_available")
RATE_WINDOW = "1m"  # what the test substitutes for Grafana's $__rate_interval (30 samples at 2 s)


def prometheus_binary() -> str:
    """The `prometheus` executable; installs Debian's package when it is missing, skips if that is impossible."""
    if found := shutil.which("prometheus"):
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("Prometheus is not installed and there is no apt-get to install it (apt-get install prometheus)")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        pytest.skip("Prometheus is not installed and this user cannot run apt-get (not root, no sudo)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run([*prefix, "apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if found := shutil.which("prometheus") or (Path("/usr/bin/prometheus").exists() and "/usr/bin/prometheus"):
        return found
    pytest.skip(f"Prometheus is not installed and `apt-get install prometheus` failed: {result.stderr[-500:]}")


def prometheus_config_for(temp_dir: str) -> dict:
    """configs/prometheus.yml for the test cluster: its discovery file, a 2 s scrape interval."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = config["scrape_configs"]
    [sd] = job["file_sd_configs"]
    [path] = sd["files"]
    assert Path(path) == Path("/tmp/ray") / DISCOVERY_FILE, path  # the link Ray keeps in its default temp dir
    sd["files"] = [str(Path(temp_dir) / DISCOVERY_FILE)]
    sd["refresh_interval"] = "2s"
    config["global"].update(scrape_interval="2s", evaluation_interval="2s", scrape_timeout="2s")
    return config


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def values(self, expr: str) -> list[float]:
        return [float(sample["value"][1]) for sample in self.query(expr)]


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """(LiveService, Prometheus, cluster): the app on a private cluster, scraped by a Prometheus we started."""
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("observability")
    prometheus_port, http_port = free_port(), free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    extra_env = {
        "PYTHONPATH": str(REPO),
        "RAY_PROMETHEUS_HOST": prometheus_url,  # the README's wiring of the Ray dashboard
        # The autoscaler and the dashboard export their metrics on fixed default ports; give ours free ones so
        # that concurrent clusters on this machine do not collide (they are listed in the discovery file).
        "AUTOSCALER_METRIC_PORT": str(free_port()),
        "DASHBOARD_METRIC_PORT": str(free_port()),
        "RAY_metrics_report_interval_ms": "2000",  # replicas report metrics every 2 s instead of 10 s
    }
    with local_ray_cluster(num_cpus=2, num_gpus=1, extra_env=extra_env) as cluster:
        config = make_config(http_port, workdir / "store.sqlite")
        service = LiveService(cluster, f"http://127.0.0.1:{http_port}", config, workdir / "serve.yaml")
        deploy_with_retry(cluster, config, service.config_path)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(prometheus_config_for(cluster.temp_dir)))
        log = open(workdir / "prometheus.log", "w")
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: requests.get(f"{prometheus_url}/-/ready", timeout=2).status_code == 200, 60,
                       "Prometheus did not become ready")
            wait_until(lambda: healthy(service.base_url), 240, "the app did not become healthy")
            yield service, Prometheus(prometheus_url), cluster
        finally:
            stop_process(process, grace=20)
            log.close()


def send_traffic(base_url: str, rounds: int = 4) -> dict:
    """Synthetic maps, concurrent inferences (so batches form) with several mc_samples, and invalid requests."""
    counts = {"inferences": 0, "generated": 0, "invalid": 0}

    def one(k: int) -> None:
        spec = {"mass": float(10 ** (11.5 + 0.05 * (k % 40))), "grid_size": 32, "seed": k}
        if k % 2:
            spec["scenario"] = "CDM"  # rendered by the SyntheticGenerator deployment, smooth hosts by the ingress
        generated = requests.post(base_url + "/api/v1/synthetic", json=spec, headers={"Accept": NPY}, timeout=60)
        assert generated.status_code == 200, generated.text
        params = {"mc_samples": (1, 10, 50, 200)[k % 4], "seed": k}
        inferred = requests.post(base_url + "/api/v1/inference", params=params, data=generated.content,
                                 headers={"Content-Type": NPY}, timeout=60)
        assert inferred.status_code == 200, inferred.text
        invalid = requests.post(base_url + "/api/v1/inference", json={"convergence_map": [[0.1]]}, timeout=60)
        assert invalid.status_code == 422, invalid.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8 * rounds)))
    counts.update(inferences=8 * rounds, generated=8 * rounds, invalid=8 * rounds)
    return counts


def test_prometheus_scrapes_every_ray_node_through_the_discovery_file(observed):
    service, prometheus, cluster = observed
    discovery = Path(cluster.temp_dir) / DISCOVERY_FILE
    assert discovery.is_symlink() and discovery.resolve() == (cluster.session_dir() / DISCOVERY_FILE).resolve()

    def node_target_up():
        targets = requests.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        node = [t for t in targets if t["labels"]["instance"].endswith(f":{cluster.metrics_port}")]
        return node and node[0]["health"] == "up" and targets

    targets = wait_until(node_target_up, 120, "the node's metrics port never appeared as a healthy target")
    assert {t["labels"]["job"] for t in targets} == {"ray"}
    assert {t["discoveredLabels"]["__meta_filepath"] for t in targets} == {str(discovery)}
    assert len(targets) >= 2  # the node, plus the dashboard's and (once it runs) the autoscaler's endpoints


def test_custom_and_serve_metrics_reach_prometheus(observed):
    service, prometheus, _ = observed
    counts = send_traffic(service.base_url)
    selectors = {
        # our ray.serve.metrics (deployments/metrics.py), with Serve's tags
        'ray_lensing_requests_total{application="lensing",deployment="Ingress",endpoint="/api/v1/inference",'
        'method="POST",status="422"}': counts["invalid"],
        'ray_lensing_requests_total{endpoint="/api/v1/synthetic",status="200"}': counts["generated"],
        'ray_lensing_request_latency_ms_count{endpoint="/api/v1/inference"}': 2 * counts["inferences"],
        'ray_lensing_pinn_batch_size_count{deployment="PINNPredictor",device="cpu"}': 1,
        'ray_lensing_inference_latency_ms_count{device="cpu"}': 1,
        'ray_lensing_mc_samples_count{device="cpu"}': counts["inferences"],
        'ray_lensing_maps_inferred_total{device="cpu"}': counts["inferences"],
        'ray_lensing_maps_generated_total{profile_type="NFW",format="application/x-npy"}': counts["generated"],
        'ray_lensing_maps_generated_total{deployment="SyntheticGenerator",scenario="CDM"}': counts["generated"] // 2,
        # Ray Serve's own
        'ray_serve_num_http_requests_total{application="lensing",route="/api/v1/inference",status_code="422"}':
            counts["invalid"],
        'ray_serve_deployment_request_counter_total{deployment="PINNPredictor"}': 1,
        'ray_serve_deployment_processing_latency_ms_count{deployment="Ingress"}': 1,
        'ray_serve_deployment_replica_healthy{application="lensing",deployment="PINNPredictor"}': 1,
    }

    def totals():
        return {s: sum(prometheus.values(f"sum({s})")) for s in selectors}

    def reached():
        current = totals()
        return all(current[s] >= minimum for s, minimum in selectors.items()) and current

    try:
        wait_until(reached, 90, "metrics did not reach Prometheus")
    except TimeoutError:
        current = totals()
        missing = {s: (current[s], m) for s, m in selectors.items() if current[s] < m}
        pytest.fail(f"series below the traffic sent (got, expected at least): {missing}")
    # the histograms carry the buckets of deployments/metrics.py
    buckets = {float(s["metric"]["le"]) for s in prometheus.query('ray_lensing_mc_samples_bucket{device="cpu"}')}
    assert {1.0, 10.0, 50.0, 200.0, math.inf} <= buckets


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def test_dashboard_covers_the_issue_and_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard)
    text = " ".join(expr for _, expr in expressions)
    for metric in ("ray_lensing_requests_total", "ray_lensing_request_latency_ms_bucket",
                   "ray_lensing_pinn_batch_size_bucket", "ray_lensing_mc_samples_bucket",
                   "ray_serve_deployment_replica_healthy", "ray_serve_autoscaling_target_replicas",
                   "ray_node_gpus_utilization", "ray_serve_num_deployment_http_error_requests_total"):
        assert metric in text, metric
    assert "histogram_quantile(0.99" in text and 'status=~"5.."' in text
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["application"]["current"]["value"] == "lensing"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    # the only variables the expressions use are the ones the test substitutes below
    assert set(re.findall(r"\$\{?(\w+)", text)) == {"application", "__rate_interval"}


def test_every_dashboard_expression_returns_data(observed):
    service, prometheus, cluster = observed
    dashboard = json.loads(DASHBOARD.read_text())
    application = dashboard["templating"]["list"][1]
    # the variable's query (label_values(metric, label)), as Grafana runs it: the label values API
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", application["definition"]).groups()
    values = requests.get(f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric},
                          timeout=10).json()["data"]
    assert application["current"]["value"] in values, values

    physical_gpu = bool(prometheus.query("ray_node_gpus_available"))
    expressions = [(title, expr.replace("$application", "lensing").replace("$__rate_interval", RATE_WINDOW))
                   for title, expr in dashboard_expressions(dashboard)]
    needs_gpu = [(t, e) for t, e in expressions if any(m in e for m in PHYSICAL_GPU_METRICS)]
    if not physical_gpu:
        for _, expr in needs_gpu:  # valid PromQL, empty here: this machine has no NVIDIA GPU
            prometheus.query(expr)
        expressions = [x for x in expressions if x not in needs_gpu]

    def without_data() -> list[str]:
        empty = []
        for title, expr in expressions:
            finite = [v for v in prometheus.values(expr) if math.isfinite(v)]
            if not finite:
                empty.append(f"{title}: {expr}")
        return empty

    deadline = time.monotonic() + 120
    while (empty := without_data()) and time.monotonic() < deadline:
        send_traffic(service.base_url, rounds=1)  # rates need traffic inside the window
        time.sleep(2)
    assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)


def test_ray_dashboard_reaches_prometheus(observed):
    """RAY_PROMETHEUS_HOST on the head: the Ray dashboard's metrics view finds our Prometheus."""
    _, _, cluster = observed
    response = requests.get(f"{cluster.dashboard_url}/api/prometheus_health", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["result"] is True, response.text
