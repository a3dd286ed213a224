"""Offline checks of the cluster deployment files: Ray's own launcher validation of cluster/aws.yaml, the
KubeRay RayService's structure and its serveConfigV2 against configs/serve-gpu.yaml, the Dockerfile.
Nothing here reaches a cloud or a Kubernetes API.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from harness.serve import GPU_CONFIG, REPO, deployment, load_yaml

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

AWS = REPO / "cluster" / "aws.yaml"
RAYSERVICE = REPO / "cluster" / "kuberay" / "rayservice.yaml"
SYNC = REPO / "cluster" / "kuberay" / "sync.py"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS_CONFIG = REPO / "configs" / "prometheus.yml"


def rayservice() -> dict:
    [service] = [doc for doc in yaml.safe_load_all(RAYSERVICE.read_text()) if doc and doc["kind"] == "RayService"]
    return service


def api_keys_file() -> str | None:
    """security.api_keys_file of the GPU serve config: every node that may run an ingress replica needs it."""
    return load_yaml(GPU_CONFIG)["applications"][0]["args"].get("security", {}).get("api_keys_file")


def gpu_args() -> dict:
    return load_yaml(GPU_CONFIG)["applications"][0]["args"]


# Variables the GPU config reads its secrets' URLs from: every node must have them from a secret.
def url_variables() -> list[str]:
    args = gpu_args()
    names = [args.get("store_url_env"), args.get("security", {}).get("rate_limit", {}).get("redis_url_env")]
    return [name for name in names if name]


def pinn_gpus_at_most() -> float:
    """GPUs the PINN pool can hold at its largest (max_replicas x num_gpus per replica)."""
    predictor = deployment(load_yaml(GPU_CONFIG), "PINNPredictor")
    return predictor["autoscaling_config"]["max_replicas"] * predictor["ray_actor_options"]["num_gpus"]


# --- cluster launcher (AWS) -----------------------------------------------------------------------------


def test_launcher_config_passes_rays_validation():
    config = yaml.safe_load(AWS.read_text())
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before talking to AWS
    validate_config(prepared)
    broken = copy.deepcopy(prepared)
    broken["available_node_types"]["ray.worker.gpu"]["max_wokers"] = 2  # a typo: the schema refuses it
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_launcher_node_types():
    config = yaml.safe_load(AWS.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = [t for name, t in types.items() if t["resources"].get("GPU", 0) > 0]
    cpu = [t for name, t in types.items() if t is not head and t["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1
    [gpu], [cpu] = gpu, cpu
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and gpu["node_config"]["InstanceType"].startswith("g")
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 1
    assert config["max_workers"] >= gpu["max_workers"] + cpu["max_workers"]
    # the GPU workers hold the PINN pool at its largest, and no more than that
    assert gpu["max_workers"] * gpu["resources"]["GPU"] == pytest.approx(pinn_gpus_at_most())


def test_launcher_installs_the_project_and_exports_metrics():
    config = yaml.safe_load(AWS.read_text())
    assert config["file_mounts"]["~/lensing-serve"] == "."
    assert any('pip install' in c and "lensing-serve[serve]" in c for c in config["setup_commands"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    head = " ".join(config["head_start_ray_commands"])
    assert "--metrics-export-port=8080" in head and "RAY_PROMETHEUS_HOST=" in head
    assert "configs/prometheus.yml" in head
    assert all("--metrics-export-port=8080" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert any("prometheus" in c for c in config["head_setup_commands"])
    if keys := api_keys_file():  # setup_commands put the key file where the ingress reads it, on every node
        assert any(keys in c for c in config["setup_commands"]), keys
    # the store's and Redis' URLs: from a file of the operator's, exported on every node before ray start
    env_file = next(remote for remote, local in config["file_mounts"].items() if local.endswith("lensing-serve/env"))
    for command in [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
                    if "ray start" in c]:
        assert f"set -a; . $HOME/{env_file[2:]}; set +a;" in command, command
    assert any("chmod 600" in c and env_file[2:] in c for c in config["setup_commands"])
    # Ray's default temp dir, which configs/prometheus.yml reads the discovery file from
    assert "--temp-dir" not in head
    [job] = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


# --- KubeRay --------------------------------------------------------------------------------------------


def test_rayservice_serve_config_is_the_gpu_serve_config():
    """serveConfigV2 must parse to exactly configs/serve-gpu.yaml (regenerate: python cluster/kuberay/sync.py)."""
    serve_config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert serve_config == load_yaml(GPU_CONFIG), "run: python cluster/kuberay/sync.py"
    check = subprocess.run([sys.executable, str(SYNC), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_sync_rewrites_a_stale_block(tmp_path):
    sys.path.insert(0, str(SYNC.parent))
    try:
        import sync
    finally:
        sys.path.remove(str(SYNC.parent))
    manifest = RAYSERVICE.read_text()
    stale = sync.synced(manifest, "applications: []\n")
    assert yaml.safe_load(list(yaml.safe_load_all(stale))[-1]["spec"]["serveConfigV2"]) == {"applications": []}
    restored = sync.synced(stale, GPU_CONFIG.read_text())
    assert restored == manifest  # only the block changes, and the manifest is in sync


def test_rayservice_structure():
    service = rayservice()
    assert service["apiVersion"] == "ray.io/v1" and service["metadata"]["name"]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    [head_container] = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head_container["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080}
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in head_container["env"]}
    assert {"RAY_PROMETHEUS_HOST", "RAY_GRAFANA_HOST", "RAY_GRAFANA_IFRAME_HOST"} <= set(env)
    # the job store is PostgreSQL: every pod may run a JobStore or ingress replica and reads the URLs from
    # Secrets (the head also offers lensing_store, where a SQLite store would be pinned)
    assert gpu_args()["store_url_env"] and "store_url" not in gpu_args()
    assert "lensing_store" in head["rayStartParams"]["resources"]

    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    if keys := api_keys_file():  # any pod may run an ingress replica: all mount the key file's secret
        for pod in [head, *groups.values()]:
            spec = pod["template"]["spec"]
            secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
            [container] = spec["containers"]
            mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounted.get(keys.rsplit("/", 1)[0]) in secrets, pod.get("groupName", "head")
    for pod in [head, *groups.values()]:
        [container] = pod["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        for name in url_variables():
            assert "secretKeyRef" in env[name]["valueFrom"] and "value" not in env[name], (name, pod.get("groupName"))
    images = {head_container["image"]}
    gpu_groups = []
    for group in groups.values():
        [container] = group["template"]["spec"]["containers"]
        images.add(container["image"])
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] >= 1
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        assert container["resources"]["limits"] == container["resources"]["requests"]
        if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0:
            gpu_groups.append((group, int(container["resources"]["limits"]["nvidia.com/gpu"])))
    assert len(images) == 1  # one image (the Dockerfile's) everywhere
    assert len(gpu_groups) == 1 and len(groups) == 2  # a GPU group and a CPU group
    [(gpu_group, gpus_per_pod)] = gpu_groups
    assert gpu_group["maxReplicas"] * gpus_per_pod == pytest.approx(pinn_gpus_at_most())
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_group["template"]["spec"]["tolerations"])
    documents = yaml.safe_load_all(RAYSERVICE.read_text())
    claims = [doc for doc in documents if doc and doc["kind"] == "PersistentVolumeClaim"]
    claim_names = {v["persistentVolumeClaim"]["claimName"] for v in head["template"]["spec"]["volumes"]
                   if "persistentVolumeClaim" in v}
    assert claim_names == {c["metadata"]["name"] for c in claims}


def test_no_password_in_a_config_file():
    """Store and Redis URLs with a password come from the environment; the files show placeholders only."""
    url_with_password = re.compile(r"(postgres(?:ql)?|rediss?)://[^\s/:@]*:(?P<password>[^\s@/]+)@")
    for path in (GPU_CONFIG, REPO / "serve_config.yaml", AWS, RAYSERVICE):
        for match in url_with_password.finditer(path.read_text()):
            assert match["password"] == "PASSWORD", (path.name, match.group(0))
    aws = yaml.safe_load(AWS.read_text())
    assert aws["available_node_types"][aws["head_node_type"]]["resources"]["lensing_store"] == 1


# --- Dockerfile -----------------------------------------------------------------------------------------


def test_dockerfile_builds_on_the_official_ray_image():
    text = DOCKERFILE.read_text()
    [base] = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311")
    assert re.search(r"pip install [^\n]*\.\[serve\]", text)
    for path in ("lensing", "deployments", "cluster", "configs", "pyproject.toml"):
        assert re.search(rf"^COPY\b[^\n]*\b{re.escape(path)}\b", text, flags=re.MULTILINE), path
    assert (REPO / "pyproject.toml").read_text().count('ray[serve,default,data]==' + ray.__version__) == 1


def test_fake_multinode_config_validates_and_mirrors_the_launcher():
    fake = yaml.safe_load((REPO / "cluster" / "fake_multinode.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(fake)))  # no missing defaults file with type "external"
    assert fake["provider"]["module"].endswith("FakeMultiNodeProvider")
    aws = yaml.safe_load(AWS.read_text())
    workers = {name for name in aws["available_node_types"] if name != aws["head_node_type"]}
    assert workers == {name for name in fake["available_node_types"] if name != fake["head_node_type"]}
    for name in workers:
        assert bool(fake["available_node_types"][name]["resources"].get("GPU")) == bool(
            aws["available_node_types"][name]["resources"].get("GPU")), name
        assert fake["available_node_types"][name]["min_workers"] == 0
