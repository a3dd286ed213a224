"""Synthetic maps for /api/v1/synthetic and batch items: API spec -> library request -> map -> job record.

Seeds are drawn and reported when the client gives none, so every map can be regenerated. A small smooth
map as JSON or npy costs less to render than a call to the generator, so it is rendered here
(`generator.renders_inline`); maps with substructure, large maps, FITS, PNG and batch items go to the
`SyntheticGenerator`. The job is committed before the map is answered, so its id works at once.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import asdict

from ray.serve.handle import DeploymentHandle

from lensing.limits import InputError
from lensing.synthetic import MapRequest

from . import timing
from .generator import GeneratedMap, MapRenderer, renders_inline
from .http.errors import invalid_input
from .http.schemas import SyntheticRequest
from .recorder import JobRecorder

SEED_BITS = 32  # seeds stay exact in JavaScript clients


def new_seed() -> int:
    return secrets.randbits(SEED_BITS)


def map_request(spec: SyntheticRequest, seed: int, loc: tuple[str | int, ...] = ()) -> MapRequest:
    """The library request of an API spec; a library InputError becomes a 422 at the field, under `loc`."""
    try:
        return MapRequest(
            profile_type=spec.profile_type, M_vir=spec.mass, scale_radius=spec.scale_radius,
            concentration=spec.concentration, ellipticity=spec.ellipticity, position_angle=spec.position_angle,
            grid_size=spec.grid_size, fov_kpc=spec.fov_kpc, z_lens=spec.z_lens, z_source=spec.z_source,
            scenario=spec.scenario, seed=seed, noise_sigma=spec.noise_sigma, center_x_kpc=spec.center_x_kpc,
            center_y_kpc=spec.center_y_kpc, ra=spec.ra, dec=spec.dec,
        )
    except InputError as exc:
        raise invalid_input(exc, loc, SyntheticRequest.model_fields) from None


class Synthesis:
    """Renders maps (here or in the generator) and records the synthetic jobs."""

    def __init__(self, generator: DeploymentHandle, recorder: JobRecorder) -> None:
        self.generator, self.recorder = generator, recorder
        self.renderer = MapRenderer()

    async def render(self, request: MapRequest, fmt: str | None = None) -> GeneratedMap:
        """The map of a validated request; `fmt` (a media type) selects a file to encode, if any."""
        if fmt is not None and renders_inline(request, fmt):
            return self.renderer.render(request, fmt)
        return await self.generator.generate.remote(request, fmt)

    async def synthesize(self, spec: SyntheticRequest, fmt: str) -> tuple[str, GeneratedMap]:
        """Generate a map, record the job (with its seed, so it can be regenerated) and return both."""
        request = map_request(spec, spec.seed if spec.seed is not None else new_seed())
        with timing.stage("render"):
            generated = await self.render(request, fmt)
        job_id = uuid.uuid4().hex
        metadata = {k: v for k, v in generated.map.metadata().items() if k != "request"}
        self.recorder.record(job_id, "synthetic", asdict(request),
                                   {"metadata": metadata, "parameters": generated.map.parameters()})
        return job_id, generated
