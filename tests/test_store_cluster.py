"""The app on PostgreSQL, over HTTP on 127.0.0.1: one deployment for the module, with two ingress and two
JobStore replicas, the store's URL (with its password) from the application's environment
(`store_url_env`), and a real PostgreSQL server (harness/postgres.py) that the tests stop and start.

- A 2,000-item batch while one JobStore replica and, two seconds later, the batch's ingress replica are
  killed (found through ray.util.state, ended with ray.kill): every item completed exactly once, the stats
  agree with the database.
- A PostgreSQL outage of 20 s under load: only 503s with Retry-After from the endpoints that need the
  store, /inference keeps answering (its job records wait in the ingress), no 500 and no dropped
  connection; after it every endpoint answers again without a restart, a batch running meanwhile ends
  with every item completed, and every job accepted before, during and after it is readable.
- `serve shutdown` then `serve deploy` on the same database: jobs, batches and stats intact, a batch that
  was running resumes to its end.
"""

from __future__ import annotations

import io
import subprocess
import time

import numpy as np
import psycopg
import pytest
import requests

from harness.load import Call, Load
from harness.postgres import postgres_server
from harness.ray_head import VENV_BIN
from harness.serve import (
    APP,
    LiveService,
    deployed,
    deployment,
    healthy,
    replica_actors,
    serve_applications,
    serve_deploy,
    wait_until,
)
from lensing.synthetic import MapRequest, generate_map

pytestmark = pytest.mark.slow  # starts a Ray cluster

ray = pytest.importorskip("ray")

NPY = "application/x-npy"
BATCH_ITEMS = 2000
OUTAGE_S = 20.0
RECOVERY_S = 30.0


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:  # fsync on: the durability a deployment has
        yield server


def on_postgres(store_url: str):
    def change(config: dict) -> None:
        application = config["applications"][0]
        application["runtime_env"] = {"env_vars": {"LENSING_STORE_URL": store_url}}
        args = application["args"]
        args.pop("store_url", None)
        args["store_url_env"] = "LENSING_STORE_URL"
        args["batch"].update(max_items=BATCH_ITEMS, concurrency=32)
        for name in ("Ingress", "JobStore"):
            entry = deployment(config, name)
            entry["num_replicas"] = 2  # a lost replica's twin answers while it is replaced
            entry["health_check_period_s"] = 2
        deployment(config, "PINNPredictor").setdefault("ray_actor_options", {})["num_cpus"] = 0.5

    return change


@pytest.fixture(scope="module")
def live(tmp_path_factory, postgres) -> LiveService:
    with deployed(tmp_path_factory.mktemp("pg"), on_postgres(postgres.url), num_cpus=3, timeout=360) as service:
        yield service


def sql(postgres, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(postgres.url) as conn:
        return conn.execute(query, params).fetchall()


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def kill(actor) -> None:
    ray.kill(ray.get_actor(actor.name, namespace="serve"), no_restart=True)


def replaced(service: LiveService, name: str, lost) -> bool:
    alive = {a.actor_id for a in replica_actors(service, name)}
    return len(alive) == 2 and lost.actor_id not in alive


def submit_batch(service: LiveService, maps: int, synthetic: int, mc_samples: int = 1, grid_size: int = 32) -> dict:
    rng = np.random.default_rng(7)
    body = {"maps": [{"convergence_map": np.round(0.05 + 0.01 * rng.random((16, 16)), 3).tolist()}
                     for _ in range(maps)],
            "synthetic": [{"mass": float(m), "grid_size": grid_size} for m in np.geomspace(3e11, 3e13, synthetic)],
            "mc_samples": mc_samples, "seed": 11}
    response = requests.post(service.url("/api/v1/batch"), json=body, timeout=120)
    assert response.status_code == 202, response.text
    return response.json()


def item_counts(postgres, batch_id: str) -> dict[str, int]:
    return dict(sql(postgres, "SELECT status, COUNT(*) FROM jobs WHERE batch_id = %s GROUP BY status", (batch_id,)))


def attempts(postgres, batch_id: str) -> int:
    return sql(postgres, "SELECT attempts FROM batches WHERE batch_id = %s", (batch_id,))[0][0]


def batch_done(postgres, batch_id: str) -> bool:
    return sql(postgres, "SELECT status FROM batches WHERE batch_id = %s", (batch_id,))[0][0] in ("completed", "failed")


def batch_status(service: LiveService, batch_id: str) -> dict:
    return requests.get(service.url(f"/api/v1/batch/{batch_id}/status"), timeout=60).json()


def assert_every_item_completed_once(service: LiveService, postgres, batch: dict) -> dict:
    status = batch_status(service, batch["batch_id"])
    assert status["status"] == "completed" and status["completed"] == status["total"] == len(batch["job_ids"]), \
        (status["status"], status["completed"], status["failed"], status["error"])
    assert [r["job_id"] for r in status["results"]] == batch["job_ids"]  # each item once, in order
    seeds = [r["result"]["seed"] for r in status["results"]]
    assert seeds == [(11 + k) % 2**63 for k in range(len(seeds))]  # each result is its own item's
    rows = sql(postgres, "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM jobs WHERE batch_id = %s"
               " AND status = 'completed' AND input IS NULL", (batch["batch_id"],))
    assert rows == [(len(seeds), len(seeds))]
    return status


def test_a_batch_survives_losing_a_job_store_and_an_ingress_replica(live, postgres):
    service = live
    [store_lost, _] = replica_actors(service, "JobStore")  # looked up first: the state API takes seconds
    ingress = replica_actors(service, "Ingress")
    batch = submit_batch(service, maps=BATCH_ITEMS - 500, synthetic=500)
    batch_id, started = batch["batch_id"], time.monotonic()
    wait_until(lambda: item_counts(postgres, batch_id).get("completed", 0) >= 50, 180, "the batch did not start")

    kill(store_lost)
    killed_store_at = item_counts(postgres, batch_id).get("completed", 0)
    time.sleep(2)
    # Then the ingress replica that runs the batch (its runner's lease names the replica): the lease lapses
    # (3 s) and the other replica's runner claims the batch and resumes it from its unfinished items.
    assert not batch_done(postgres, batch_id), "make the batch longer"
    [(owner,)] = sql(postgres, "SELECT owner FROM batches WHERE batch_id = %s", (batch_id,))
    [ingress_lost] = [a for a in ingress  # names end with #REPLICA_TAG
                      if owner.startswith(f"runner-{a.name.rsplit('#')[-1]}-")]
    kill(ingress_lost)
    killed_ingress_at = item_counts(postgres, batch_id).get("completed", 0)
    killed_ingress = time.monotonic()
    wait_until(lambda: attempts(postgres, batch_id) > 1, 60, "no runner resumed the batch")
    resumed_after = time.monotonic() - killed_ingress
    print(f"\nJobStore replica killed at {killed_store_at} items, then the batch's ingress replica at "
          f"{killed_ingress_at}; resumed by the other ingress replica after {resumed_after:.1f} s")
    wait_until(lambda: replaced(service, "JobStore", store_lost), 120, "no new JobStore replica")
    wait_until(lambda: batch_done(postgres, batch_id), 600, "the batch did not finish")
    took = time.monotonic() - started
    status = assert_every_item_completed_once(service, postgres, batch)
    print(f"{status['completed']} of {status['total']} items completed once, {status['failed']} failed, "
          f"in {took:.0f} s ({status['total'] / took:.0f} items/s); runner claims {attempts(postgres, batch_id)}")
    assert attempts(postgres, batch_id) == 2
    wait_until(lambda: replaced(service, "Ingress", ingress_lost), 180, "no new ingress replica")

    time.sleep(1.5)  # counters reach the store every 0.5 s
    stats = requests.get(service.url("/api/v1/stats"), timeout=30).json()
    jobs = dict(sql(postgres, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    assert stats["completed_jobs"] == jobs.get("completed", 0) >= BATCH_ITEMS
    assert stats["total_jobs"] == sum(jobs.values()) and stats["failed_jobs"] == jobs.get("failed", 0) == 0
    assert stats["active_batches"] == 0 and stats["active_jobs"] == 0
    assert stats["requests"]["POST /api/v1/batch"]["202"] == 1


def mixed_load(service: LiveService) -> Load:
    """Four threads sending inference (half the calls), synthetic and stats requests back to back."""
    kappa = npy_bytes(generate_map(MapRequest(M_vir=2e12, scale_radius=200.0, grid_size=64)).convergence)
    base = service.base_url
    inference = Call("inference", "POST", f"{base}/api/v1/inference?mc_samples=5",
                     {"data": kappa, "headers": {"Content-Type": NPY}})
    return Load([
        inference,
        Call("synthetic", "POST", f"{base}/api/v1/synthetic",
             {"json": {"mass": 1e12, "grid_size": 64}, "headers": {"Accept": NPY}}),
        Call("stats", "GET", f"{base}/api/v1/stats", {}),
        inference,
    ], clients=4)


def test_a_postgres_outage_answers_503_and_recovers_without_a_restart(live, postgres):
    service = live
    batch = submit_batch(service, maps=300, synthetic=0)
    with mixed_load(service) as load:
        time.sleep(5)
        postgres.stop()  # pg_ctl stop -m fast -w: clients are disconnected, in-flight transactions roll back
        # the outage is the span in which the server is certainly down: from pg_ctl stop's return (its
        # shutdown checkpoint takes seconds under load) to just before pg_ctl start
        down_at = time.monotonic()
        try:
            time.sleep(OUTAGE_S)
        finally:
            restart_at = time.monotonic()
            postgres.start()
        started_at = time.monotonic()
        wait_until(lambda: all(load.first_success_after(started_at, name) for name in ("synthetic", "stats")),
                   RECOVERY_S + 30, "the store-backed endpoints did not recover")
        recovered = {name: load.first_success_after(started_at, name) - started_at for name in ("synthetic", "stats")}
        time.sleep(3)
    wait_until(lambda: batch_done(postgres, batch["batch_id"]), 300, "the batch did not finish after the outage")
    assert_every_item_completed_once(service, postgres, batch)

    during = load.between(down_at, restart_at)  # requests that started and ended while the server was down
    statuses = {(o.name, o.status) for o in during}
    unexpected = [o for o in load.outcomes if o.status not in (200, 503)]
    no_retry_after = [o for o in load.outcomes if o.status == 503 and not o.retry_after]
    count = {s: sum(o.status == s for o in during) for s in (200, 503)}
    print(f"\noutage of {OUTAGE_S:.0f} s under load: {len(during)} requests, {count[503]} answered 503, "
          f"{count[200]} answered 200 ({sorted(statuses)}); store-backed endpoints back "
          f"{max(recovered.values()):.1f} s after the database; {len(load.outcomes)} requests in all")
    assert not unexpected, unexpected[:5]  # no 500, no dropped connection: 200 or 503 only
    assert not no_retry_after, no_retry_after[:5]
    assert ("synthetic", 503) in statuses and ("stats", 503) in statuses
    assert {s for name, s in statuses if name in ("synthetic", "stats")} == {503}
    assert ("inference", 200) in statuses  # /inference needs no store: it keeps answering
    assert max(recovered.values()) <= RECOVERY_S

    # every job answered 200 is in the store, those answered during the outage included (held, then written)
    answered = [o.job_id for o in load.outcomes if o.status == 200 and o.job_id]
    held = [o.job_id for o in during if o.status == 200 and o.job_id]
    assert held
    wait_until(lambda: sql(postgres, "SELECT COUNT(*) FROM jobs WHERE job_id = ANY(%s)", (answered,))[0][0]
               == len(answered), 30, "jobs answered during the outage never reached the store")
    print(f"{len(held)} inference records held during the outage, all stored after it")


def test_jobs_batches_and_stats_survive_a_serve_shutdown(live, postgres):
    service = live
    synthetic = requests.post(service.url("/api/v1/synthetic"), json={"mass": 2e12, "seed": 9}, timeout=60).json()
    done = submit_batch(service, maps=3, synthetic=2)
    wait_until(lambda: batch_done(postgres, done["batch_id"]), 120, "batch did not finish")
    time.sleep(1.5)  # counters reach the store every 0.5 s
    job_before = requests.get(service.url(f"/api/v1/jobs/{synthetic['job_id']}"), timeout=30).json()
    done_before = batch_status(service, done["batch_id"])
    stats_before = requests.get(service.url("/api/v1/stats"), timeout=30).json()
    running = submit_batch(service, maps=0, synthetic=900, mc_samples=1000, grid_size=64)  # long enough to be cut
    wait_until(lambda: item_counts(postgres, running["batch_id"]).get("completed", 0) >= 1, 60, "no start")

    result = subprocess.run([str(VENV_BIN / "serve"), "shutdown", "-a", service.cluster.dashboard_url, "-y"],
                            env=service.cluster.env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: APP not in serve_applications(service.cluster), 120, "the app was not shut down")
    cut_at = item_counts(postgres, running["batch_id"])
    assert not batch_done(postgres, running["batch_id"]), "make the batch longer"

    serve_deploy(service.cluster, service.config, service.config_path)
    wait_until(lambda: healthy(service.base_url), 240, "the app did not come back")
    assert requests.get(service.url(f"/api/v1/jobs/{synthetic['job_id']}"), timeout=30).json() == job_before
    assert batch_status(service, done["batch_id"]) == done_before
    stats_after = requests.get(service.url("/api/v1/stats"), timeout=30).json()
    assert stats_after["total_jobs"] >= stats_before["total_jobs"]
    assert stats_after["completed_jobs"] >= stats_before["completed_jobs"]
    for endpoint, counts in stats_before["requests"].items():
        for code, count in counts.items():
            assert stats_after["requests"][endpoint][code] >= count, (endpoint, code)
    wait_until(lambda: batch_done(postgres, running["batch_id"]), 300, "the cut batch was not resumed")
    assert_every_item_completed_once(service, postgres, running)
    print(f"\nbatch cut by the shutdown at {cut_at}, resumed to all {len(running['job_ids'])} items")
