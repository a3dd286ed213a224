"""The typed records of a batch job, shared by the batch runner and the job store.

A batch item is one map to infer: a map the client sent (stored as .npy bytes with its geometry), a
synthetic spec (regenerated from its `MapRequest` and seed when the item runs), or an earlier synthetic
job (its stored request). The store keeps an item as a job row whose `request` column is `request_json()`,
the same JSON that `GET /api/v1/jobs/{id}` shows; `from_stored` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Source = Literal["job", "synthetic", "map"]


@dataclass(frozen=True)
class BatchOptions:
    """Options that apply to every item of a batch; item k's dropout seed is base_seed + k."""

    mc_samples: int
    refine: bool
    base_seed: int
    symmetrize: bool = False

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> BatchOptions:
        """The stored options (a batch stored before `symmetrize` existed reads as not symmetrized)."""
        return cls(int(data["mc_samples"]), bool(data["refine"]), int(data["base_seed"]),
                   bool(data.get("symmetrize", False)))

    def to_stored(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch, as the runner needs it and the store keeps it."""

    job_id: str
    index: int
    source: Source
    seed: int  # dropout seed of the inference (and the MapRequest's own seed draws the map)
    map_request: dict[str, Any] | None = None  # synthetic and job items: MapRequest fields
    source_job_id: str | None = None  # job items: the synthetic job the map comes from
    geometry: dict[str, float] | None = None  # map items: fov_kpc, z_lens, z_source
    map_shape: tuple[int, ...] | None = None  # map items
    input: bytes | None = None  # map items: the map as .npy bytes (dropped once the item is finished)

    def request_json(self) -> dict[str, Any]:
        """What the store records as the item's request (shown by GET /api/v1/jobs/{job_id})."""
        if self.source == "map":
            return {"geometry": self.geometry, "map_shape": list(self.map_shape or ()), "seed": self.seed}
        request: dict[str, Any] = {"map_request": self.map_request, "seed": self.seed}
        if self.source_job_id is not None:
            request["source_job_id"] = self.source_job_id
        return request

    @classmethod
    def from_stored(cls, job_id: str, index: int, source: Source, request: dict[str, Any],
                    data: bytes | None) -> BatchItem:
        """The item of a stored job row (`request` is the parsed `request_json`)."""
        shape = request.get("map_shape")
        return cls(job_id=job_id, index=index, source=source, seed=int(request["seed"]),
                   map_request=request.get("map_request"), source_job_id=request.get("source_job_id"),
                   geometry=request.get("geometry"), map_shape=tuple(shape) if shape is not None else None,
                   input=data)
