"""The sweep config: a pydantic v2 schema for the YAML files in configs/sweeps/.

A config fixes every input of a sweep (sampling, box, scenarios, noise, geometry, mc_samples, sharding,
seed), so the same config always produces the same maps and the same table. `execution` only says how
the work is spread over the cluster and is left out of `data_hash`, so a sweep can be resumed with
more or fewer actors.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lensing.cosmology import DEFAULT_Z_LENS, DEFAULT_Z_SOURCE
from lensing.grid import DEFAULT_FOV_KPC
from lensing.limits import ELLIPTICITY, FOV, GRID_SIZES, MASS, MC_SAMPLES, NOISE_SIGMA, SCALE_RADIUS, check_redshifts

SMOOTH: Literal["none"] = "none"  # scenario label of a smooth host (no substructure)
ScenarioLabel = Literal["none", "CDM", "WDM", "SIDM"]
SCENARIO_LABELS: tuple[ScenarioLabel, ...] = (SMOOTH, "CDM", "WDM", "SIDM")
STAGES = ("generate", "infer", "write")  # the per-shard stage times a sweep reports


class ConfigError(ValueError):
    """A sweep config that cannot be read or does not validate; the message names the fields."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


class Box(_Strict):
    """The part of the API parameter box (docs/design.md section 3) to sweep: [low, high] per parameter."""

    M_vir: Range = MASS.endpoints
    scale_radius: Range = SCALE_RADIUS.endpoints
    ellipticity: Range = ELLIPTICITY.endpoints

    @model_validator(mode="after")
    def _inside_api_box(self) -> Box:
        for name, limits in (("M_vir", MASS), ("scale_radius", SCALE_RADIUS), ("ellipticity", ELLIPTICITY)):
            low, high = getattr(self, name)
            if not (limits.low <= low <= high <= limits.high):
                raise ValueError(f"box.{name} must satisfy {limits.low:g} <= low <= high <= {limits.high:g}, "
                                 f"got [{low:g}, {high:g}]")
        return self


class RandomSampling(_Strict):
    """`n_maps` hosts drawn over the box: M_vir and r_s log-uniform, e uniform; scenario and noise uniform."""

    method: Literal["random"]
    n_maps: Annotated[int, Field(ge=1, le=100_000_000)]


class GridSampling(_Strict):
    """A full factorial grid: M_vir and r_s log-spaced, e linear, times scenarios, noise levels and repeats."""

    method: Literal["grid"]
    M_vir_points: Annotated[int, Field(ge=1, le=1000)]
    scale_radius_points: Annotated[int, Field(ge=1, le=1000)]
    ellipticity_points: Annotated[int, Field(ge=1, le=1000)]
    repeats: Annotated[int, Field(ge=1, le=100_000)] = 1


class Execution(_Strict):
    """How the work is spread: an actor pool of `actors` (fixed) or [min, max] (autoscaling) workers."""

    actors: Annotated[int, Field(ge=1)] | tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = 2
    cpus_per_actor: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_actor: Annotated[float, Field(gt=0, le=1)] = 0.25  # used only when the cluster has GPUs
    torch_threads: Annotated[int, Field(ge=1)] | None = None  # default: cpus_per_actor, at least 1
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 2
    # Shards in flight per actor, each in its own thread: one renders its maps (Python-bound scenario draws)
    # while another runs the PINN (torch), and the actor never waits for the driver between shards.
    shards_per_actor: Annotated[int, Field(ge=1, le=8)] = 2

    @model_validator(mode="after")
    def _ordered(self) -> Execution:
        low, high = self.pool_size
        if low > high:
            raise ValueError(f"actors must be [min, max] with min <= max, got {[low, high]}")
        return self

    @property
    def pool_size(self) -> tuple[int, int]:
        """(min, max) actors."""
        return (self.actors, self.actors) if isinstance(self.actors, int) else self.actors

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, math.floor(self.cpus_per_actor))


class SweepConfig(_Strict):
    """A whole sweep; see configs/sweeps/small.yaml for an annotated example."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    sampling: RandomSampling | GridSampling = Field(discriminator="method")
    box: Box = Box()
    scenarios: Annotated[list[ScenarioLabel], Field(min_length=1)] = list(SCENARIO_LABELS)
    noise_levels: Annotated[list[Annotated[float, Field(ge=NOISE_SIGMA.low, le=NOISE_SIGMA.high)]],
                            Field(min_length=1)] = [0.0]
    grid_size: Literal[GRID_SIZES] = 64  # type: ignore[valid-type]
    fov_kpc: Annotated[float, Field(ge=FOV.low, le=FOV.high)] = DEFAULT_FOV_KPC
    z_lens: float = DEFAULT_Z_LENS
    z_source: float = DEFAULT_Z_SOURCE
    # 50: the count the model's intervals are calibrated at; with 20 the 200-map small sweep's report flagged
    # 14 under-covering regions, with 50 five (about what chance gives among its 156 checks)
    mc_samples: Annotated[int, Field(ge=MC_SAMPLES.low, le=MC_SAMPLES.high)] = 50
    # pool the network over each map's eight quarter turns and mirror images (the API's `symmetrize`): smaller
    # errors, intervals calibrated for it, 8x the inference compute
    symmetrize: bool = False
    shard_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    execution: Execution = Execution()

    @field_validator("scenarios", "noise_levels")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"entries must be unique, got {values}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        check_redshifts(self.z_lens, self.z_source)  # ValueError naming z_lens / z_source
        return self

    @property
    def n_maps(self) -> int:
        s = self.sampling
        if isinstance(s, RandomSampling):
            return s.n_maps
        return (s.M_vir_points * s.scale_radius_points * s.ellipticity_points * len(self.scenarios)
                * len(self.noise_levels) * s.repeats)

    @property
    def n_shards(self) -> int:
        return -(-self.n_maps // self.shard_size)

    def shard_range(self, shard: int) -> range:
        """Global map indices of one shard."""
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} outside 0..{self.n_shards - 1}")
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_maps))

    def data_hash(self) -> str:
        """sha256 of everything that determines the table (all but `execution`). `symmetrize` enters only when
        set, so that the outputs of sweeps written before the option existed still resume."""
        data = self.model_dump(mode="json", exclude={"execution"} | ({"symmetrize"} if not self.symmetrize else set()))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        shown = item["type"] != "missing" and not isinstance(item["input"], dict)
        got = f" (got {item['input']!r})" if shown else ""
        lines.append(f"  - {where}: {item['msg']}{got}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> SweepConfig:
    """Validate a parsed YAML document; raise ConfigError with one line per invalid field."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid sweep config {source}: expected a mapping at the top level, "
                          f"got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid sweep config {source}:\n{_format_errors(error)}") from None


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a YAML sweep config."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read sweep config {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid sweep config {path}: not valid YAML: {error}") from None
    return parse_config(data, str(path))
