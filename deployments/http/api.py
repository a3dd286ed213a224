"""The v1 HTTP API (docs/design.md section 6): routes, content negotiation and the OpenAPI document.

`create_app(service, settings)` builds a FastAPI app per ingress replica around `service`, anything with
the narrow `Service` interface below (the `Ingress` deployment), which does the work; the routes only
parse, negotiate formats and shape responses. Maps are read as JSON, npy or FITS by Content-Type and
written as JSON, npy, FITS or PNG by Accept. /inference parses its body itself (one route, three body
formats), so its request body is described to OpenAPI by hand; the other routes use FastAPI models.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from .. import timing
from ..settings import AppSettings
from ..store import now_iso
from . import middleware, ui
from .codecs import (
    FITS,
    JSON,
    MAP_FORMATS,
    NPY,
    PNG,
    TABLE_FORMATS,
    json_response,
    media_type,
    negotiate,
    results_table,
    table_fits_bytes,
    table_npy_bytes,
)
from .errors import InvalidInput, from_validation_error, install_handlers, unprocessable
from .inference_body import InferenceInput, read_inference
from .schemas import (
    API_VERSION,
    MAP_SIDES,
    PACKAGE_VERSION,
    BatchRequest,
    BatchStatus,
    BatchSubmitted,
    Error,
    Health,
    InferenceOptions,
    InferenceRequest,
    InferenceResponse,
    JobRecord,
    ModelInfo,
    Models,
    Root,
    StackRequest,
    StackResponse,
    Stats,
    SyntheticRequest,
    SyntheticResponse,
)
from .ui.card import CARD_URL

if TYPE_CHECKING:
    from ..generator import GeneratedMap


class Service(Protocol):
    """What the routes need from the replica that serves them (`deployments.ingress.Ingress`)."""

    async def startup(self) -> None: ...
    async def shutdown(self) -> None: ...
    def record(self, endpoint: str, method: str, status: int, latency_ms: float, stages: dict[str, float]) -> None: ...
    async def model_info(self) -> dict | None: ...
    async def stats(self) -> dict: ...
    async def synthesize(self, spec: SyntheticRequest, fmt: str) -> tuple[str, GeneratedMap]: ...
    async def infer(self, kappa: np.ndarray, options: InferenceOptions) -> dict: ...
    async def infer_stack(self, request: InferenceInput) -> dict: ...
    async def submit_batch(self, spec: BatchRequest) -> dict: ...
    async def batch_status(self, batch_id: str) -> dict: ...
    async def job(self, job_id: str) -> dict: ...

DESCRIPTION = (
    "Gravitational lensing by dark-matter halos: synthetic convergence maps (NFW, elliptical NFW, "
    "CDM/WDM/SIDM substructure) and PINN inference of M_vir, r_s, ellipticity and the dark-matter "
    "scenario with calibrated MC Dropout uncertainties. Maps travel as JSON, .npy or FITS."
)
BINARY = {"schema": {"type": "string", "format": "binary"}}
Responses = dict[int | str, dict[str, Any]]  # FastAPI's `responses` argument
ERRORS: Responses = {404: {"model": Error}, 413: {"model": Error}, 422: {"model": Error},
                     503: {"model": Error}}  # 503: the job store is unavailable (Retry-After)
MAP_RESPONSES: Responses = {
    200: {"content": {NPY: BINARY, FITS: BINARY, PNG: BINARY},
          "description": "the map (JSON, npy, FITS or PNG by Accept)"},
    406: {"model": Error}, **ERRORS,
}
INFERENCE_BODY = {
    "requestBody": {
        "required": True,
        "description": "a square kappa map, 16..512 pixels a side, or a stack of them: JSON (one map in "
                       "`convergence_map`, or a stack in `convergence_maps`, with the options as fields), or "
                       ".npy / FITS bytes (one 2-D map, an npy (B, N, N) stack, a FITS cube or several image "
                       "HDUs; options as query parameters, repeated for one value per map; FITS header cards "
                       "give the geometry)",
        "content": {JSON: {"schema": {"oneOf": [{"$ref": "#/components/schemas/InferenceRequest"},
                                                {"$ref": "#/components/schemas/StackRequest"}]}},
                    NPY: BINARY, FITS: BINARY},
    }
}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the request schemas that /inference's hand-written body refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferenceRequest, StackRequest):
            extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(extra.pop("$defs", {}))
            components[model.__name__] = extra
        app.openapi_schema = schema
    return app.openapi_schema


def stack_status(response: dict) -> int:
    """200 when every map of a stack has a result, 207 when some do; when none does, 422 (all invalid) or
    500 (one failed by our fault)."""
    if response["failed"] == 0:
        return 200
    if response["succeeded"]:
        return 207
    return 500 if any(entry["status"] == 500 for entry in response["results"]) else 422


def stack_response(response: dict, fmt: str) -> Response:
    """A stack's response as JSON (the default), or its results table as .npy or a FITS binary table."""
    status, headers = stack_status(response), {"X-Job-Id": response["job_id"]}
    if status >= 400:  # an error status keeps the shape of every error: a `detail` saying why
        response = response | {"detail": f"none of the {response['count']} maps has a result: "
                                          "results[k].detail says why for map k"}
    if fmt == JSON:
        return json_response(response, status, headers)
    table = results_table(response["results"])
    if fmt == NPY:
        return Response(table_npy_bytes(table), status, headers, media_type=NPY)
    cards = {"JOB_ID": response["job_id"], "MODEL": response["model"]["name"],
             "MODELVER": response["model"]["version"]}
    return Response(table_fits_bytes(table, cards), status, headers, media_type=FITS)


def _error_loc(is_json: bool, loc: tuple) -> list:
    """Where an /inference input error lies: in the JSON body; for npy/FITS, the body (the map) or the query."""
    if is_json:
        return ["body", *loc]
    if loc and loc[0] == "body":  # a FITS header card
        return list(loc)
    return ["body"] if loc in ((), ("convergence_map",)) else ["query", *loc]


INPUT_UNITS = {
    "convergence_map": "kappa = Sigma / Sigma_cr, dimensionless; a square map",
    "fov_kpc": "side of the map, physical kpc",
    "z_lens": "lens redshift",
    "z_source": "source redshift",
}
OUTPUT_UNITS = {
    "M_vir": "Msun (M_200c)",
    "r_s": "physical kpc",
    "ellipticity": "(1 - q) / (1 + q)",
    "position_angle": "degrees, counter-clockwise from +x",
    "concentration": "r_200 / r_s",
    "center_x_kpc": "physical kpc from the map centre, +x",
    "center_y_kpc": "physical kpc from the map centre, +y",
}
HEADLINE_METRICS = ("n_maps", "median_abs_dlog10_M", "median_rel_err_rs", "median_abs_de", "coverage_68",
                    "coverage_95", "scenario_accuracy", "scenario_accuracy_stderr")


def _class_descriptions(names: list[str], described: Any) -> list[dict]:
    """[{name, description}] from the card's `class_descriptions` ({name: text} or a list in class order)."""
    if isinstance(described, dict):
        texts = [described.get(name) for name in names]
    elif isinstance(described, list) and len(described) == len(names):
        texts = list(described)
    else:
        texts = [None] * len(names)
    return [{"name": name, "description": text if isinstance(text, str) else None}
            for name, text in zip(names, texts, strict=True)]


def model_summary(model: dict) -> ModelInfo:
    """GET /api/v1/models' entry for the pool's `info()`: identity, input, outputs, classes, headline metrics and
    the link to the full card (a few hundred bytes, where the card is kilobytes)."""
    metrics = model.get("metrics") or {}
    classes = list(model.get("class_names") or [])
    return ModelInfo.model_validate({
        "name": model["name"], "version": model["version"], "sha256": model.get("sha256") or "",
        **({"description": model["description"]} if model.get("description") else {}),
        "input_size": model["input_size"],
        "input": {"size": model["input_size"], "accepted_sides": list(MAP_SIDES), "units": INPUT_UNITS},
        "output_parameters": model["output_parameters"],
        "output_units": {name: OUTPUT_UNITS.get(name, "") for name in model["output_parameters"]},
        "class_names": classes, "classes": _class_descriptions(classes, model.get("class_descriptions")),
        "metrics": {key: metrics[key] for key in HEADLINE_METRICS if key in metrics},
        "training_domain": model.get("training_domain") or {},
        "device": model["device"], "loaded": model.get("loaded", True), "card_url": CARD_URL,
    })


def create_app(service: Service, settings: AppSettings) -> FastAPI:
    """The FastAPI app of one ingress replica."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.startup()
        yield
        await service.shutdown()

    app = FastAPI(title="Lensing Serve", version=PACKAGE_VERSION, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # ui.install serves both pages without a CDN
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    install_handlers(app)
    middleware.install(app, settings, service.record)

    versions = {"package_version": PACKAGE_VERSION, "api_version": API_VERSION}

    @app.get("/", response_model=Root)
    async def root() -> dict:
        model = await service.model_info()
        return {"message": "Gravitational Lensing API", "version": PACKAGE_VERSION, **versions,
                "model_version": model["version"] if model else None, "docs": "/docs", "health": "/health",
                "models": "/api/v1/models", "openapi": "/openapi.json"}

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> Response:
        model = await service.model_info()
        body = {"status": "healthy" if model else "degraded", "timestamp": now_iso(), "version": PACKAGE_VERSION,
                **versions, "model_version": model["version"] if model else None,
                "gpu_available": bool(model and model["device"] == "cuda"), "model_loaded": model is not None}
        return json_response(body, 200 if model else 503)

    @app.get("/api/v1/models", response_model=Models)
    async def models() -> dict:
        """A summary of the served model; its full card is at card_url (GET /api/v1/models/card)."""
        model = await service.model_info()
        return {"models": [model_summary(model)] if model else [], **versions}

    @app.get("/api/v1/stats", response_model=Stats)
    async def stats() -> dict:
        counts = await service.stats()
        model = await service.model_info()
        return counts | {"model_loaded": model is not None, "gpu_available": bool(model and model["device"] == "cuda"),
                         "timestamp": now_iso()}

    @app.post("/api/v1/synthetic", response_model=SyntheticResponse, responses=MAP_RESPONSES)
    async def synthetic(spec: SyntheticRequest, request: Request) -> Response:
        fmt = negotiate(request.headers.get("accept"), MAP_FORMATS)
        if fmt is None:
            raise HTTPException(406, f"Accept must allow one of {', '.join(MAP_FORMATS)}")
        job_id, generated = await service.synthesize(spec, fmt)
        headers = {"X-Job-Id": job_id}
        if fmt != JSON:
            suffix = {NPY: "npy", FITS: "fits", PNG: "png"}[fmt]
            headers["Content-Disposition"] = f'inline; filename="kappa-{job_id}.{suffix}"'
            return Response(generated.body, media_type=fmt, headers=headers)
        smap = generated.map
        coordinates = {"X": smap.x_kpc.tolist(), "Y": smap.y_kpc.tolist(), "unit": "kpc"}
        if spec.arcsec:
            x_arcsec, y_arcsec = smap.coordinates_arcsec()
            coordinates |= {"X_arcsec": x_arcsec.tolist(), "Y_arcsec": y_arcsec.tolist()}
        with timing.stage("encode"):
            return json_response({
                "job_id": job_id, "convergence_map": smap.convergence.tolist(), "coordinates": coordinates,
                "metadata": smap.metadata(), "parameters": smap.parameters(), "geometry": smap.geometry_dict(),
                "timestamp": now_iso(),
            }, headers=headers)

    # 200: one map's result, or a stack's (every map answered); the route returns its Response itself
    @app.post("/api/v1/inference", response_model=InferenceResponse | StackResponse, openapi_extra=INFERENCE_BODY,
              responses={207: {"model": StackResponse, "description": "a stack: some maps have no result"},
                         406: {"model": Error}, 415: {"model": Error}, 503: {"model": Error}, **ERRORS})
    async def inference(request: Request, query: Annotated[InferenceOptions, Query()]) -> Response:
        content_type = media_type(request.headers.get("content-type"))
        is_json = content_type in (JSON, "")
        try:
            body = await request.body()
            with timing.stage("decode"):
                parsed = read_inference(content_type, body, query, request.query_params.multi_items(),
                                        settings.security.max_map_side, settings.stacks)
            if parsed.stacked:
                fmt = negotiate(request.headers.get("accept"), TABLE_FORMATS)
                if fmt is None:
                    raise HTTPException(406, f"Accept must allow one of {', '.join(TABLE_FORMATS)}")
                return stack_response(await service.infer_stack(parsed), fmt)
            result = await service.infer(parsed.maps[0], parsed.options[0])  # type: ignore[arg-type]
        except ValidationError as exc:
            return from_validation_error(exc, ("body",) if is_json else ("query",))
        except InvalidInput as exc:
            return unprocessable([{"loc": _error_loc(is_json, exc.loc), "msg": str(exc), "type": "value_error"}])
        with timing.stage("encode"):
            return json_response(result, headers={"X-Job-Id": result["job_id"]})

    @app.post("/api/v1/batch", status_code=202, response_model=BatchSubmitted, responses=ERRORS)
    async def batch(spec: BatchRequest) -> Response:
        return json_response(await service.submit_batch(spec), 202)

    @app.get("/api/v1/batch/{batch_id}/status", response_model=BatchStatus, responses=ERRORS)
    async def batch_status(batch_id: Annotated[str, Path(max_length=64)]) -> Response:
        return json_response(await service.batch_status(batch_id))

    @app.get("/api/v1/jobs/{job_id}", response_model=JobRecord, responses=ERRORS)
    async def job(job_id: Annotated[str, Path(max_length=64)]) -> Response:
        return json_response(await service.job(job_id))

    ui.install(app, settings)  # /ui, /docs and /redoc without a CDN, /api/v1/models/card
    return app
