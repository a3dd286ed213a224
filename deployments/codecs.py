"""Wire formats of maps: JSON rows, .npy (application/x-npy), FITS (application/fits), PNG (image/png).

Request bodies are chosen by Content-Type, responses by Accept (RFC 9110 q-values; `*/*` and a missing
header mean JSON). Every decoded map goes through `lensing.io.validate_map` and the size rule of
/inference, and a bad one raises `InvalidInput` naming the field, which the API answers with 422.
JSON is written with pydantic-core's serializer (several times faster than `json` for map payloads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydantic_core
from starlette.responses import Response

from lensing.io import from_fits_bytes, from_npy_bytes, validate_map

from .errors import InvalidInput
from .schemas import INFERENCE_MAP_SIZES

JSON = "application/json"
NPY = "application/x-npy"
FITS = "application/fits"
PNG = "image/png"
MAP_FORMATS = (JSON, NPY, FITS, PNG)
BODY_FORMATS = (JSON, NPY, FITS)


def media_type(content_type: str | None) -> str:
    """'application/json; charset=utf-8' -> 'application/json' (empty string when missing)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def negotiate(accept: str | None, offered: Sequence[str]) -> str | None:
    """The offered media type the Accept header prefers (ties go to the first offered), or None."""
    if not accept or not accept.strip():
        return offered[0]
    best, best_q = None, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        wanted = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        for offer in offered:
            matches = wanted in (offer, "*/*") or (wanted.endswith("/*") and offer.startswith(wanted[:-1]))
            if matches and q > best_q:
                best, best_q = offer, q
                break
    return best


def field_name(loc: Sequence[str | int]) -> str:
    """('maps', 2, 'convergence_map') -> 'maps[2].convergence_map'; () -> 'body'."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name or "body"


def check_map(kappa, loc: Sequence[str | int] = ("convergence_map",)) -> np.ndarray:
    """A validated float64 map of 16..512 pixels a side, else InvalidInput at `loc` (relative to the body)."""
    name = field_name(loc)
    try:
        kappa = validate_map(kappa, name=name)
    except ValueError as exc:
        raise InvalidInput(loc, str(exc)) from None
    low, high = INFERENCE_MAP_SIZES
    if not low <= kappa.shape[0] <= high:
        raise InvalidInput(loc, f"{name} must be {low}..{high} pixels a side, got {kappa.shape[0]}")
    return kappa


def map_from_body(content_type: str, body: bytes) -> tuple[np.ndarray, dict]:
    """Decode an npy or FITS body: (map, geometry cards found in a FITS header)."""
    try:
        if content_type == NPY:
            kappa, cards = from_npy_bytes(body), {}
        else:
            kappa, cards = from_fits_bytes(body)
    except ValueError as exc:
        raise InvalidInput((), str(exc)) from None
    geometry = {key: cards[key] for key in ("fov_kpc", "z_lens", "z_source") if cards.get(key) is not None}
    return check_map(kappa, ()), geometry


def json_response(payload: object, status_code: int = 200, headers: dict | None = None) -> Response:
    """A JSON response serialised by pydantic-core (numpy arrays must already be lists)."""
    return Response(pydantic_core.to_json(payload), status_code=status_code, headers=headers, media_type=JSON)
