"""Error responses: 422 naming the field, 413, 404, 406/415, 503 with Retry-After, and a bare 500 (never a stack trace:
a generic message and the request id, with the exception logged under that id).

Every 422 has FastAPI's shape, `{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`, whether pydantic,
our own shape checks or the physics core found the problem; the offending input is never echoed back (a
map can be megabytes). The core raises `lensing.limits.InputError`, which names the field in the
library's spelling; `invalid_input` turns it into an `InvalidInput` at the API's name for that field
(`API_NAMES`, the one table of names that differ). Every other exception is an internal fault: a 500.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from lensing.limits import InputError

logger = logging.getLogger("ray.serve")

MAX_ERRORS = 20


class InvalidInput(ValueError):
    """Bad client input; `loc` is the field's path inside the body (or query), as in pydantic errors."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


# Library field names (InputError.field) that the API spells differently; all others are the same.
API_NAMES = {"M_vir": "mass"}


def invalid_input(exc: InputError, prefix: Sequence[str | int] = (), fields: Collection[str] = ()) -> InvalidInput:
    """The 422 of a library InputError: at `prefix` + the field's API name when the request has that field
    (`fields`), else at `prefix` itself (a field the client did not send, e.g. a FITS card of the body)."""
    name = API_NAMES.get(exc.field, exc.field)
    return InvalidInput((*prefix, name) if name in fields else tuple(prefix), str(exc))


class InternalFailure(RuntimeError):
    """A fault of ours in a deployment (reported to the client as a 500 with the request id)."""


class UnknownId(LookupError):
    """A job or batch id the store does not know (404)."""


class Unavailable(RuntimeError):
    """A dependency (the PINN pool) is not ready (503 with Retry-After: `retry_after_s`)."""

    retry_after_s = 5


class StoreUnavailable(Unavailable):
    """The job store cannot be reached (its database is down or unreachable, no JobStore replica answers):
    the request may succeed when retried, so a 503, never a 500. Faults of ours in the store stay 500s."""

    retry_after_s = 2


class PayloadTooLarge(Exception):
    """A request past a configured size limit (413): its body, or the maps of a stack."""


class BodyTooLarge(PayloadTooLarge):
    """A request body past `max_body_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


def validation_errors(errors: Iterable[Any], prefix: Sequence[str | int] = ()) -> list[dict]:
    """pydantic/FastAPI error dicts reduced to loc, msg and type (no input, context or URL), at most
    MAX_ERRORS of them: a map full of NaN would otherwise yield one error per pixel."""
    errors = list(errors)
    reduced = [{"loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg", "invalid"),
                "type": e.get("type", "value_error")} for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        reduced.append({"loc": list(prefix), "msg": f"and {len(errors) - MAX_ERRORS} more errors", "type": "truncated"})
    return reduced


def unprocessable(errors: list[dict]) -> Response:
    return JSONResponse({"detail": errors}, 422)


def from_validation_error(exc: ValidationError, prefix: Sequence[str | int]) -> Response:
    return unprocessable(validation_errors(exc.errors(include_url=False, include_input=False,
                                                      include_context=False), prefix))


def current_request_id() -> str:
    """Serve's id of the request being handled (the proxy's access log and X-Request-Id), else a new one."""
    try:
        from ray.serve.context import _get_serve_request_context

        request_id = _get_serve_request_context().request_id
    except Exception:  # noqa: BLE001 - a private Serve API; any failure just means a fresh id
        request_id = ""
    return request_id or uuid.uuid4().hex


def install_handlers(app: FastAPI) -> None:
    """Register the exception handlers on `app`."""

    async def request_validation(_: Request, exc: RequestValidationError) -> Response:
        return unprocessable(validation_errors(exc.errors()))

    async def invalid_input(_: Request, exc: InvalidInput) -> Response:
        return unprocessable([{"loc": ["body", *exc.loc], "msg": str(exc), "type": "value_error"}])

    async def unknown_id(_: Request, exc: UnknownId) -> Response:
        return JSONResponse({"detail": str(exc)}, 404)

    async def too_large(_: Request, exc: PayloadTooLarge) -> Response:
        return JSONResponse({"detail": str(exc)}, 413)

    async def unavailable(_: Request, exc: Unavailable) -> Response:
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": str(exc.retry_after_s)})

    async def http_error(_: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI answers 400 for a JSON body that is not UTF-8 (a UnicodeDecodeError); like any other
            # JSON it cannot parse, that is a 422 at the body here
            return unprocessable([{"loc": ["body"], "msg": "the body must be JSON text in UTF-8",
                                   "type": "json_invalid"}])
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    async def internal(_: Request, exc: Exception) -> Response:
        request_id = current_request_id()
        logger.error("unhandled error in request %s: %s", request_id, type(exc).__name__, exc_info=exc)
        return JSONResponse({"detail": "internal server error", "request_id": request_id}, 500,
                            headers={"X-Request-Id": request_id})

    handlers: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
        RequestValidationError: request_validation, InvalidInput: invalid_input, UnknownId: unknown_id,
        PayloadTooLarge: too_large, Unavailable: unavailable, HTTPException: http_error, Exception: internal,
    }
    for exception_type, handler in handlers.items():
        app.add_exception_handler(exception_type, handler)
