"""Baseline (c) of bench/http_load.py: the Ray Serve floor, an HTTP ingress that does nothing.

A FastAPI route in a Serve replica, same proxy and settings as the app: what any Serve endpoint costs.
"""

from fastapi import FastAPI, Request
from ray import serve

api = FastAPI()


@serve.deployment(max_ongoing_requests=128, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class NoOp:
    @api.post("/")
    async def noop(self, request: Request) -> dict:
        await request.body()
        return {"ok": True}


app = NoOp.bind()
