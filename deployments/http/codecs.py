"""Wire formats of maps: JSON rows, .npy (application/x-npy), FITS (application/fits), PNG (image/png).

Request bodies are chosen by Content-Type, responses by Accept (RFC 9110 q-values; `*/*` and a missing
header mean JSON). Every decoded map goes through `lensing.io.validate_map` and the size rule of
/inference, and a bad one raises `InvalidInput` naming the field, which the API answers with 422.
JSON is written with pydantic-core's serializer (several times faster than `json` for map payloads).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydantic_core
from astropy.io import fits
from numpy.lib import format as npy_format
from starlette.responses import Response

from lensing.io import from_npy_bytes, validate_map
from lensing.limits import InputError, check_kappa_domain

from ..settings import StackLimits
from .errors import InvalidInput, PayloadTooLarge
from .schemas import MAP_SIDES

JSON = "application/json"
NPY = "application/x-npy"
FITS = "application/fits"
PNG = "image/png"
MAP_FORMATS = (JSON, NPY, FITS, PNG)
BODY_FORMATS = (JSON, NPY, FITS)
TABLE_FORMATS = (JSON, NPY, FITS)  # a stack's results: JSON entries, or a table as .npy or a FITS binary table


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


def declared_shapes(content_type: str, body: bytes) -> list[tuple[int, ...]] | None:
    """The array shapes the npy header or every FITS image header declares, read before any data
    (None: unreadable headers, reported by the full decoder)."""
    try:
        if content_type == NPY:
            buffer = io.BytesIO(body)
            version = npy_format.read_magic(buffer)
            read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
            if version not in read_header:
                return None
            shape, _, _ = read_header[version](buffer)
            return [tuple(shape)]
        with fits.open(io.BytesIO(body)) as hdus:  # headers only: data are read lazily
            shapes = [tuple(int(hdu.header.get(f"NAXIS{axis}", 0)) for axis in range(naxis, 0, -1))
                      for hdu in hdus if hdu.is_image and (naxis := int(hdu.header.get("NAXIS", 0))) > 0]
        return shapes or None
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the full decoder
        return None


@dataclass
class BodyMaps:
    """The maps of an npy or FITS body, before validation, and each one's FITS header (None for npy)."""

    maps: list[np.ndarray]
    headers: list[fits.Header | None]
    stacked: bool  # a stack (npy (B, N, N), a FITS cube or several image HDUs), answered with a table


def _check_declared(shapes: list[tuple[int, ...]], max_side: int, limits: StackLimits) -> None:
    """Refuse, before decoding, a body whose declared arrays break the side rule or the stack limits."""
    planes = []
    for shape in shapes:
        if len(shape) not in (2, 3):
            raise InvalidInput((), f"body must hold 2-D maps or a 3-D stack (B, N, N), got shape {shape}")
        planes += [shape[-2:]] * (shape[0] if len(shape) == 3 else 1)
        if (reason := check_side(shape[-2:], "body", max_side)) is not None:
            raise InvalidInput((), reason)
    check_stack_size(len(planes), sum(a * b for a, b in planes), limits)


def check_stack_size(count: int, pixels: int, limits: StackLimits) -> None:
    """413 (PayloadTooLarge) past the configured number of maps or pixels in one request."""
    if count > limits.max_maps:
        raise PayloadTooLarge(f"a request holds at most {limits.max_maps} maps, got {count}")
    if pixels > limits.max_pixels:
        raise PayloadTooLarge(f"a request holds at most {limits.max_pixels} pixels, got {pixels}")


def maps_from_body(content_type: str, body: bytes, max_side: int, limits: StackLimits) -> BodyMaps:
    """Decode an npy or FITS body into its maps: one 2-D map, an npy stack (B, N, N), a FITS cube (each
    plane a map, sharing the header) or several FITS image HDUs (each with its own header's cards).

    Declared shapes are checked first, so an oversized array is refused before it is decoded. A single map
    is validated here (InvalidInput at the body); the maps of a stack are validated one by one later, so
    that one bad map gets its own error while the others are answered.
    """
    if (shapes := declared_shapes(content_type, body)) is not None:
        _check_declared(shapes, max_side, limits)
    if content_type == NPY:
        try:
            array = from_npy_bytes(body) if shapes and len(shapes[0]) == 2 else _npy_stack(body)
        except ValueError as exc:
            raise InvalidInput((), str(exc)) from None
        if array.ndim == 2:
            return BodyMaps([check_map(array, (), max_side)], [None], stacked=False)
        return BodyMaps(list(array), [None] * len(array), stacked=True)
    images = _fits_images(body)
    if len(images) == 1 and images[0][0].ndim == 2:
        image, header = images[0]
        try:
            kappa = validate_map(image, name="FITS image")
        except InputError as exc:
            raise InvalidInput((), str(exc)) from None
        return BodyMaps([check_map(kappa, (), max_side)], [header], stacked=False)
    maps: list[np.ndarray] = []
    headers: list[fits.Header | None] = []
    for image, header in images:
        planes = list(image) if image.ndim == 3 else [image]
        maps += planes
        headers += [header] * len(planes)
    return BodyMaps(maps, headers, stacked=True)


def _npy_stack(body: bytes) -> np.ndarray:
    """A 3-D numeric npy array (no pickles), else ValueError."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"not a valid .npy map: {exc}") from None
    if not isinstance(array, np.ndarray) or array.ndim != 3:
        raise ValueError("not a valid .npy stack: expected one array of shape (B, N, N)")
    return array


def _fits_images(body: bytes) -> list[tuple[np.ndarray, fits.Header]]:
    """(image data, header) of every FITS HDU that holds image data, in order."""
    try:
        with fits.open(io.BytesIO(body)) as hdus:
            images = [(np.array(hdu.data), hdu.header.copy()) for hdu in hdus
                      if hdu.is_image and hdu.data is not None]
    except (OSError, TypeError) as exc:  # astropy: OSError for a corrupt file, TypeError for truncated data
        raise InvalidInput((), f"not a valid FITS map (corrupt or truncated): {exc}") from None
    if not images:
        raise InvalidInput((), "not a valid FITS map: no HDU holds image data")
    for image, _ in images:
        if image.ndim not in (2, 3):
            raise InvalidInput((), f"FITS images must be 2-D maps or 3-D cubes, got shape {image.shape}")
    return images


def results_table(entries: list[dict]) -> np.ndarray:
    """The entries of a stack response as a structured numpy array, one row per map: index, status, seed,
    mc_samples, refined, symmetrized, every prediction and uncertainty, prob_<class>, predicted_class, entropy, mutual
    information, noise_sigma and its source, whether the map lies inside the training domain and the names of
    what lies outside it, comma-separated (NaN, -1, False or empty where a map has no result)."""
    done = [e for e in entries if e["status"] == 200]
    predictions = list(done[0]["predictions"]) if done else []
    uncertainties = sorted({key for e in done for key in (e.get("uncertainties") or {})})
    classes = list(done[0]["classification"]) if done else []
    columns = [("index", "i8"), ("status", "i4"), ("seed", "i8"), ("mc_samples", "i4"), ("refined", "?"),
               ("symmetrized", "?")]
    columns += [(name, "f8") for name in (*predictions, *uncertainties)]
    columns += [(f"prob_{name}", "f8") for name in classes]
    columns += [("predicted_class", "S16"), ("entropy", "f8"), ("mutual_information", "f8"), ("noise_sigma", "f8"),
                ("noise_sigma_source", "S9"), ("inside_training_domain", "?"), ("outside_training_domain", "S96")]
    table = np.zeros(len(entries), dtype=columns)
    for name, kind in columns:
        if kind == "f8":
            table[name] = np.nan
    table["seed"], table["mc_samples"] = -1, -1
    for row, entry in zip(table, entries, strict=True):
        row["index"], row["status"] = entry["index"], entry["status"]
        if entry.get("seed") is not None:
            row["seed"] = entry["seed"]
        if entry["status"] != 200:
            continue
        row["mc_samples"], row["refined"] = entry["mc_samples"], entry["refined"]
        row["symmetrized"] = entry["symmetrized"]
        for name, value in {**entry["predictions"], **(entry.get("uncertainties") or {})}.items():
            row[name] = value
        for name, value in entry["classification"].items():
            row[f"prob_{name}"] = value
        row["predicted_class"] = entry["predicted_class"].encode()
        row["entropy"], row["mutual_information"] = entry["entropy"], entry["mutual_information"]
        row["noise_sigma"], row["noise_sigma_source"] = entry["noise_sigma"], entry["noise_sigma_source"].encode()
        domain = entry["training_domain"]
        row["inside_training_domain"] = domain["inside"]
        row["outside_training_domain"] = ",".join(domain["outside"]).encode()
    return table


def table_npy_bytes(table: np.ndarray) -> bytes:
    """A structured array as .npy bytes (readable with np.load(..., allow_pickle=False))."""
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    return buffer.getvalue()


def table_fits_bytes(table: np.ndarray, header_cards: dict[str, object]) -> bytes:
    """A structured array as a FITS binary table (extension RESULTS) behind an empty primary HDU."""
    hdu = fits.BinTableHDU(table, name="RESULTS")
    for keyword, value in header_cards.items():
        hdu.header[keyword] = value
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def json_response(payload: object, status_code: int = 200, headers: dict | None = None) -> Response:
    """A JSON response serialised by pydantic-core (numpy arrays must already be lists)."""
    return Response(pydantic_core.to_json(payload), status_code=status_code, headers=headers, media_type=JSON)
