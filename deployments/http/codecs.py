"""Wire formats of maps: JSON rows, .npy (application/x-npy), FITS (application/fits), PNG (image/png).

Request bodies are chosen by Content-Type, responses by Accept (RFC 9110 q-values; `*/*` and a missing
header mean JSON). Every decoded map goes through `lensing.io.validate_map` and the size rule of
/inference, and a bad one raises `InvalidInput` naming the field, which the API answers with 422.
JSON is written with pydantic-core's serializer (several times faster than `json` for map payloads).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pydantic_core
from astropy.io import fits
from numpy.lib import format as npy_format
from starlette.responses import Response

from lensing.io import from_fits_bytes, from_npy_bytes, validate_map
from lensing.limits import InputError, check_kappa_domain

from .errors import InvalidInput
from .schemas import MAP_SIDES

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


def check_side(shape: Sequence[int], name: str, max_side: int) -> str | None:
    """Why a map of `shape` is refused (2-D, square, 16..max_side a side), or None."""
    low = MAP_SIDES[0]
    if len(shape) != 2:
        return f"{name} must be 2-D, got {len(shape)}-D with shape {tuple(shape)}"
    if shape[0] != shape[1]:
        return f"{name} must be square, got shape {tuple(shape)}"
    if not low <= shape[0] <= max_side:
        return f"{name} must be {low}..{max_side} pixels a side, got {shape[0]}"
    return None


def check_map(kappa, loc: Sequence[str | int] = ("convergence_map",),
              max_side: int = MAP_SIDES[1]) -> np.ndarray:
    """A validated float64 map of 16..max_side pixels a side, else InvalidInput at `loc` (relative to the body).

    Nested lists (parsed JSON) have their shape checked before numpy sees them: rows must be lists of
    the same length as the number of rows, within the size limit.
    """
    name = field_name(loc)
    if isinstance(kappa, list):
        n = len(kappa)
        for index, row in enumerate(kappa):
            if not isinstance(row, list):
                raise InvalidInput(loc, f"{name}[{index}] must be a row (a list of numbers)")
            if len(row) != n:
                ragged = any(isinstance(r, list) and len(r) != len(row) for r in kappa)
                problem = "ragged: its rows have different lengths" if ragged else f"not square: {n} rows of {len(row)}"
                raise InvalidInput(loc, f"{name} is {problem}")
        if (reason := check_side((n, n), name, max_side)) is not None:
            raise InvalidInput(loc, reason)
    try:
        kappa = validate_map(kappa, name=name)
    except ValueError as exc:
        raise InvalidInput(loc, str(exc)) from None
    if (reason := check_side(kappa.shape, name, max_side)) is not None:
        raise InvalidInput(loc, reason)
    try:
        check_kappa_domain(kappa, name)
    except InputError as exc:
        raise InvalidInput(loc, str(exc)) from None
    return kappa


def declared_shape(content_type: str, body: bytes) -> tuple[int, ...] | None:
    """The array shape an npy header or the first FITS image header declares, read before any data."""
    try:
        if content_type == NPY:
            buffer = io.BytesIO(body)
            version = npy_format.read_magic(buffer)
            read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
            if version not in read_header:
                return None
            shape, _, _ = read_header[version](buffer)
            return tuple(shape)
        with fits.open(io.BytesIO(body)) as hdus:
            for hdu in hdus:  # headers only: data are read lazily
                naxis = int(hdu.header.get("NAXIS", 0))
                if hdu.is_image and naxis > 0:
                    return tuple(int(hdu.header.get(f"NAXIS{axis}", 0)) for axis in range(naxis, 0, -1))
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the full decoder below
        return None
    return None


def map_from_body(content_type: str, body: bytes,
                  max_side: int = MAP_SIDES[1]) -> tuple[np.ndarray, dict]:
    """Decode an npy or FITS body: (map, geometry cards found in a FITS header).

    The declared shape is checked first, so an oversized or 3-D array is refused before it is decoded.
    """
    shape = declared_shape(content_type, body)
    if shape is not None and (reason := check_side(shape, "body", max_side)) is not None:
        raise InvalidInput((), reason)
    try:
        cards: dict = {}
        if content_type == NPY:
            kappa = from_npy_bytes(body)
        else:
            kappa, cards = from_fits_bytes(body)
    except ValueError as exc:
        raise InvalidInput((), str(exc)) from None
    geometry = {key: cards[key] for key in ("fov_kpc", "z_lens", "z_source") if cards.get(key) is not None}
    return check_map(kappa, (), max_side), geometry


def json_response(payload: object, status_code: int = 200, headers: dict | None = None) -> Response:
    """A JSON response serialised by pydantic-core (numpy arrays must already be lists)."""
    return Response(pydantic_core.to_json(payload), status_code=status_code, headers=headers, media_type=JSON)
