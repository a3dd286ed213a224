"""SyntheticGenerator: renders synthetic convergence maps (CPU) for /synthetic and batch jobs.

It returns the `SyntheticMap` itself (numpy arrays travel by Ray's zero-copy pickling, not as JSON)
and, when the client asked for a file format, the file's bytes: FITS and PNG encoding is CPU work that
belongs here rather than on the ingress event loop. JSON is assembled by the ingress, which adds the
job id. A smooth host map of at most `INLINE_MAX_PIXELS` pixels as JSON or npy (about 0.5 ms at
64 x 64, 2 ms at 128 x 128) costs less than a call to this deployment, so the ingress renders those
itself with the same `MapRenderer` (`renders_inline`). Serve runs `generate` in a thread pool;
matplotlib is not thread-safe, so PNG rendering is serialised by a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ray import serve

from lensing.io import render_png, to_fits_bytes, to_npy_bytes
from lensing.synthetic import MapRequest, SyntheticMap, generate_map

from .http.codecs import FITS, JSON, NPY, PNG
from .metrics import GeneratorMetrics
from .settings import GENERATOR_REPLICA

INLINE_MAX_PIXELS = 128 * 128


@dataclass
class GeneratedMap:
    """A generated map and, for npy/FITS/PNG requests, its encoded file."""

    map: SyntheticMap
    body: bytes | None = None


def renders_inline(request: MapRequest, fmt: str) -> bool:
    """Whether a request is cheap enough for the ingress: smooth host, small grid, JSON or npy."""
    return request.scenario is None and request.grid_size**2 <= INLINE_MAX_PIXELS and fmt in (JSON, NPY)


class MapRenderer:
    """Renders a map and encodes the requested file; counts maps in the generator metrics."""

    def __init__(self) -> None:
        self._metrics = GeneratorMetrics()
        self._png_lock = threading.Lock()
        generate_map(MapRequest(grid_size=32))  # warm the cosmology cache before the first request

    def _encode(self, smap: SyntheticMap, fmt: str | None) -> bytes | None:
        if fmt == NPY:
            return to_npy_bytes(smap.convergence)
        if fmt == FITS:
            return to_fits_bytes(smap)
        if fmt == PNG:
            with self._png_lock:
                return render_png(smap)
        return None

    def render(self, request: MapRequest, fmt: str | None = None) -> GeneratedMap:
        """The map of `request`; `fmt` (a media type) selects the file to encode, if any."""
        smap = generate_map(request)
        body = self._encode(smap, fmt)
        self._metrics.record(request.profile_type, request.scenario, fmt or "array")
        return GeneratedMap(smap, body)


@serve.deployment(**GENERATOR_REPLICA.deployment_options())
class SyntheticGenerator:
    def __init__(self) -> None:
        self.renderer = MapRenderer()

    def generate(self, request: MapRequest, fmt: str | None = None) -> GeneratedMap:
        """Render the map of `request`; `fmt` (a media type) selects the file to encode, if any."""
        return self.renderer.render(request, fmt)
