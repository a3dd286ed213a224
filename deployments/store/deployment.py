"""The JobStore deployment: `JobDatabase` as Serve replicas, and where they may run.

Every ingress replica reaches the store through a handle, so any replica can answer for any job id and a
restarted ingress finds its jobs again. The URL comes from `store_url`, or from the environment variable
`store_url_env` names (read here, in the replica's own environment, so a password never travels in the
serve config or the deployment's arguments).

- SQLite: exactly one replica, on the node whose disk holds the file. A replica refuses to start when the
  deployment asks for more, and, on a cluster that offers the `lensing_store` resource (the cluster
  configs put it on the head node), anywhere but on that node (`build_app` requests the resource; a
  serve config that replaces JobStore's `ray_actor_options` must keep it).
- PostgreSQL: any number of replicas on any nodes; the server keeps the data.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from ..settings import JOB_STORE_REPLICA, STORE_RESOURCE, store_url_of
from .backend import dialect_of
from .database import JobDatabase


def planned_replicas() -> int | None:
    """The most replicas the running deployment may have (autoscaling's max_replicas), if known."""
    try:
        context: Any = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not in a replica (a plain JobStore in a test): nothing to check
        return None
    autoscaling = getattr(getattr(context, "_deployment_config", None), "autoscaling_config", None)
    if autoscaling is not None:
        return int(autoscaling.max_replicas)
    return getattr(context, "world_size", None)


def check_sqlite_placement(url: str) -> None:
    """Refuse a SQLite store with more than one replica, or away from the node that holds the store."""
    replicas = planned_replicas()
    if replicas is not None and replicas > 1:
        raise RuntimeError(f"the SQLite job store ({url}) runs exactly one JobStore replica, but the deployment "
                           f"asks for {replicas}: set JobStore's num_replicas to 1, or use a PostgreSQL store_url "
                           "for several replicas")
    import ray

    if not ray.is_initialized() or STORE_RESOURCE not in ray.cluster_resources():
        return
    if STORE_RESOURCE not in ray.get_runtime_context().get_assigned_resources():
        raise RuntimeError(f"the SQLite job store ({url}) must run on the node with the {STORE_RESOURCE!r} "
                           "resource (its disk holds the file), and this replica does not hold it: a serve config "
                           f"that sets JobStore's ray_actor_options must keep resources: {{{STORE_RESOURCE}: 0.01}}")


@serve.deployment(**JOB_STORE_REPLICA.deployment_options(logging_config={"enable_access_log": False}))
class JobStore(JobDatabase):
    """The store as Serve replicas. No access log: batch runners call it every few seconds."""

    def __init__(self, store_url: str | None, store_url_env: str | None = None, timeout_s: float = 10.0) -> None:
        url = store_url_of(store_url, store_url_env)
        if dialect_of(url) == "sqlite":
            check_sqlite_placement(url)
        super().__init__(url, timeout_s=timeout_s)
