"""/api/v1/inference requests: one map or a stack, as JSON, npy or FITS, with options for all maps or per map.

A single map (JSON `convergence_map`, a 2-D npy array, a FITS file with one 2-D image) keeps the original
specification's request and response. A stack (JSON `convergence_maps`, npy (B, N, N), a FITS cube or
several image HDUs) is answered with one entry per map: every map and its options are validated on their
own, so one bad map gets its own 422 entry naming its index while the others are answered. An option
applies to every map, or gives one value per map as a list (JSON) or as repeated query parameters
(`?seed=1&seed=2`, npy and FITS bodies); FITS header cards fill the geometry the query leaves unset, per
image HDU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from pydantic import JsonValue, TypeAdapter, ValidationError

from lensing.fits_wcs import fits_geometry
from lensing.io import fits_cards
from lensing.limits import InputError

from ..settings import StackLimits
from .codecs import BODY_FORMATS, JSON, check_map, check_stack_size, maps_from_body
from .errors import InvalidInput, validation_errors
from .schemas import PER_MAP_OPTIONS, InferenceOptions, InferenceRequest, MapRows, StackRequest

GEOMETRY = ("fov_kpc", "z_lens", "z_source")  # fits_geometry's order
MAP_ROWS: TypeAdapter[list[list[float]]] = TypeAdapter(MapRows)
JSON_OBJECT: TypeAdapter[dict[str, JsonValue]] = TypeAdapter(dict[str, JsonValue])
STACK_FIELDS = set(StackRequest.model_fields)


@dataclass
class InferenceInput:
    """What /api/v1/inference was asked: maps with their options, and what is wrong with each.

    `maps[k]` and `options[k]` are None where `errors[k]` (422 detail items) says why."""

    maps: list[np.ndarray | None]
    options: list[InferenceOptions | None]
    stacked: bool
    errors: dict[int, list[dict]] = field(default_factory=dict)

    @classmethod
    def single(cls, kappa: np.ndarray, options: InferenceOptions) -> InferenceInput:
        return cls([kappa], [options], stacked=False)


def read_inference(content_type: str, body: bytes, query: InferenceOptions, query_items: Sequence[tuple[str, str]],
                   max_side: int, limits: StackLimits) -> InferenceInput:
    """Parse and validate an /api/v1/inference request. A request-wide problem raises (ValidationError,
    InvalidInput, PayloadTooLarge, a 415 HTTPException); a problem of one map of a stack is recorded."""
    if content_type in (JSON, ""):
        return _read_json(body, max_side, limits)
    if content_type not in BODY_FORMATS:
        from starlette.exceptions import HTTPException

        raise HTTPException(415, f"Content-Type must be one of {', '.join(BODY_FORMATS)}, got {content_type!r}")
    decoded = maps_from_body(content_type, body, max_side, limits)
    given = query.model_dump(include=query.model_fields_set)
    if not decoded.stacked:
        header = decoded.headers[0]
        if header is None:
            return InferenceInput.single(decoded.maps[0], query)
        geometry = header_geometry(header, given, ()) | header_noise(header, given)
        return InferenceInput.single(decoded.maps[0], InferenceOptions.model_validate(query.model_dump() | geometry))
    lists = _repeated(query_items)
    per_map: list[dict] = []
    maps: list[np.ndarray | list[dict]] = []
    for k, (kappa, header) in enumerate(zip(decoded.maps, decoded.headers, strict=True)):
        entry: np.ndarray | list[dict] = _checked(kappa, k, ("body",), max_side)
        options = dict(given)
        if header is not None:
            explicit = given | {name: values[k] for name, values in lists.items() if name in GEOMETRY}
            try:
                options |= header_geometry(header, explicit, (k,)) | header_noise(header, explicit)
            except InvalidInput as exc:
                loc = list(exc.loc) if exc.loc[0] == "body" else ["query", *exc.loc, k]
                entry = [{"loc": loc, "msg": str(exc), "type": "value_error"}]
        per_map.append(options)
        maps.append(entry)
    return _validate_stack(maps, lists, per_map, ("query",))


def header_noise(header: fits.Header, given: dict) -> dict:
    """{"noise_sigma": the header's noise card (lensing.io's NOISE)} when the query gives none and the card
    holds a number (this service's FITS records the noise it added), else {}: the noise is then estimated."""
    value = fits_cards(header).get("noise_sigma")
    if "noise_sigma" in given or isinstance(value, bool) or not isinstance(value, (int, float)):
        return {}
    return {"noise_sigma": float(value)}


def header_geometry(header: fits.Header, given: dict, index: tuple[int, ...]) -> dict:
    """fov_kpc, z_lens, z_source of a FITS map: its header's WCS and cards and what the query gave
    explicitly; a contradiction, a rotated or non-square-pixel WCS is a 422 naming the card (at
    ["body", *index, KEYWORD]), a redshift out of range one naming the field."""
    try:
        geometry = fits_geometry(header, *(given.get(name) for name in GEOMETRY))
    except InputError as exc:
        if exc.field in InferenceOptions.model_fields:
            raise InvalidInput((exc.field,), str(exc)) from None
        raise InvalidInput(("body", *index, exc.field), str(exc)) from None
    return {"fov_kpc": geometry.fov_kpc, "z_lens": geometry.z_lens, "z_source": geometry.z_source}


def _read_json(body: bytes, max_side: int, limits: StackLimits) -> InferenceInput:
    data = JSON_OBJECT.validate_json(body) if b'"convergence_maps"' in body else None
    if data is None or "convergence_maps" not in data:
        request = InferenceRequest.model_validate_json(body)
        options = InferenceOptions.model_validate(request.model_dump(exclude={"convergence_map"}))
        return InferenceInput.single(check_map(request.convergence_map, max_side=max_side), options)
    unknown = sorted(set(data) - STACK_FIELDS)
    if unknown:
        raise InvalidInput((unknown[0],), f"{unknown[0]} is not a field of a stack request")
    maps = data.pop("convergence_maps")
    if not isinstance(maps, list) or not maps:
        raise InvalidInput(("convergence_maps",), "convergence_maps must be a non-empty list of maps")
    check_stack_size(len(maps), 0, limits)
    parsed = [_map_rows(k, m, max_side) for k, m in enumerate(maps)]
    check_stack_size(len(maps), sum(m.size for m in parsed if isinstance(m, np.ndarray)), limits)
    lists = {k: v for k, v in data.items() if isinstance(v, list)}
    scalars = {k: v for k, v in data.items() if not isinstance(v, list)}
    return _validate_stack(parsed, lists, [scalars] * len(maps), ("body",))


def _map_rows(index: int, rows: Any, max_side: int) -> np.ndarray | list[dict]:
    """One JSON map as a validated array, or its 422 detail items."""
    try:
        return check_map(MAP_ROWS.validate_python(rows, strict=True), ("convergence_maps", index), max_side)
    except ValidationError as exc:
        return validation_errors(exc.errors(include_url=False, include_input=False, include_context=False),
                                 ("body", "convergence_maps", index))
    except InvalidInput as exc:
        return [{"loc": ["body", *exc.loc], "msg": str(exc), "type": "value_error"}]


def _repeated(items: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Query parameters given more than once: per-map values."""
    values: dict[str, list[str]] = {}
    for key, value in items:
        values.setdefault(key, []).append(value)
    return {k: v for k, v in values.items() if len(v) > 1}


def _validate_stack(maps: Sequence[np.ndarray | list[dict]], lists: dict[str, list], per_map: list[dict],
                    options_loc: tuple) -> InferenceInput:
    """Per-map options (a list gives one value per map) of a stack whose maps are checked already: an entry
    of `maps` is a valid map, or the 422 details of one that is not."""
    count = len(maps)
    for name, values in lists.items():
        if name not in PER_MAP_OPTIONS:
            raise InvalidInput((name,), f"{name} cannot be given per map")
        if len(values) != count:
            raise InvalidInput((name,), f"{name} gives {len(values)} values for {count} maps (give one per map, "
                                        "or one value for all)")
    result = InferenceInput([], [], stacked=True)
    for k, entry in enumerate(maps):
        errors = list(entry) if isinstance(entry, list) else []
        try:
            options = InferenceOptions.model_validate(per_map[k] | {name: vals[k] for name, vals in lists.items()})
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_input=False, include_context=False)
            errors = errors + [{"loc": [*options_loc, *e["loc"], *([k] if e["loc"] and e["loc"][0] in lists else [])],
                                "msg": e["msg"], "type": e["type"]} for e in details]
            options = None
        ok = not errors and isinstance(entry, np.ndarray)
        result.maps.append(entry if ok and isinstance(entry, np.ndarray) else None)
        result.options.append(options if ok else None)
        if errors:
            result.errors[k] = errors
    return result


def _checked(kappa: np.ndarray, index: int, loc: tuple, max_side: int) -> np.ndarray | list[dict]:
    """One decoded map of a stack, validated, or its 422 details (at `loc` + its index)."""
    try:
        return check_map(kappa, (*loc, index), max_side)
    except InvalidInput as exc:
        return [{"loc": [*loc, index], "msg": str(exc), "type": "value_error"}]
