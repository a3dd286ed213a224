"""Pydantic v2 models of the v1 HTTP API: field names of the original specification (docs/design.md section 6).

Requests are validated strictly: every number of a JSON body must be a finite JSON number (booleans
and strings are refused), host parameters must lie in the API box. Rules that JSON Schema cannot state
are checked in code: square, non-ragged maps and the configured map size (`codecs.check_map`),
z_source > z_lens, and target_size equal to the loaded model's input size. Responses carry extra
fields beyond the original shapes (percentiles, seed, geometry), never fewer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

import lensing
from lensing.cosmology import DEFAULT_Z_LENS, DEFAULT_Z_SOURCE
from lensing.grid import DEFAULT_FOV_KPC
from lensing.limits import (
    CONCENTRATION,
    DEC,
    DEFAULT_MC_SAMPLES,
    ELLIPTICITY,
    FOV,
    GRID_SIZES,
    INFERENCE_NOISE_SIGMA,
    MAP_SIDE,
    MASS,
    MAX_ABS_KAPPA,
    MAX_CENTER_FRACTION,
    MAX_SEED,
    MC_SAMPLES,
    NOISE_SIGMA,
    POSITION_ANGLE,
    RA,
    SCALE_RADIUS,
    Z_LENS,
    Z_SOURCE,
)
from lensing.profiles import PROFILE_TYPES
from lensing.scenarios import SCENARIOS

# The three versions a client may ask about, each defined in one place (docs/design.md section 6):
API_VERSION = "1"  # the HTTP contract: the /api/v1 paths and their shapes; bumped only by a breaking change
PACKAGE_VERSION = lensing.__version__  # the installed lensing-serve release (pyproject.toml, via importlib.metadata)
# The model's version is its card's `version` (lensing/weights/pinn_card.json), reported as model_version.
MAP_SIDES = (int(MAP_SIDE.low), int(MAP_SIDE.high))  # square maps accepted by /inference

Pixel = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_KAPPA, le=MAX_ABS_KAPPA)]
# Depth 2 (a number where a row belongs, or a row where a number belongs, fails), at most 512 x 512:
# checked while parsing, before any conversion to numpy. Ragged and non-square maps: codecs.check_map.
MapRows = Annotated[list[Annotated[list[Pixel], Field(min_length=MAP_SIDES[0], max_length=MAP_SIDES[1])]],
                    Field(min_length=MAP_SIDES[0], max_length=MAP_SIDES[1])]
ProfileType = Literal[PROFILE_TYPES]  # type: ignore[valid-type]
Scenario = Literal[SCENARIOS]  # type: ignore[valid-type]
GridSize = Literal[GRID_SIZES]  # type: ignore[valid-type]


def _integral(value: Any) -> Any:
    """1.0 -> 1: JSON Schema counts a number without a fractional part as an integer, and so do we."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)]  # bounds first: they reach the schema


class _Model(BaseModel):
    """Unknown fields and non-finite numbers are refused. JSON bodies are strict as well (a boolean is not
    a number, a string is not a boolean); query parameters, which arrive as text, are not."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Geometry(_Model):
    """Geometry of a map: field of view and redshifts (docs/design.md section 3 defaults)."""

    fov_kpc: float = Field(DEFAULT_FOV_KPC, ge=FOV.low, le=FOV.high, description="side of the square map, physical kpc")
    z_lens: float = Field(DEFAULT_Z_LENS, ge=Z_LENS.low, le=Z_LENS.high, description="lens redshift")
    z_source: float = Field(DEFAULT_Z_SOURCE, gt=Z_SOURCE.low, le=Z_SOURCE.high,
                            description="source redshift, behind the lens")

    @field_validator("z_source")
    @classmethod
    def _source_behind_lens(cls, value: float, info: ValidationInfo) -> float:
        z_lens = info.data.get("z_lens")
        if z_lens is not None and value <= z_lens:
            raise ValueError(f"z_source must be larger than z_lens ({z_lens})")
        return value


class SyntheticRequest(Geometry):
    """A synthetic convergence map: host halo, optional dark-matter scenario, optional noise."""

    # The round-NFW rule of `_round_means_round`, in the OpenAPI document too (JSON Schema if/then; an
    # absent profile_type is the default "NFW", for which `if` holds), so clients and schema-driven
    # generators see it. z_source > z_lens compares two fields, which JSON Schema cannot express.
    model_config = ConfigDict(strict=True, json_schema_extra={
        "if": {"properties": {"profile_type": {"const": "NFW"}}},
        "then": {"properties": {"ellipticity": {"const": 0}}},
    })

    profile_type: ProfileType = "NFW"
    mass: float = Field(
        2e12, ge=MASS.low, le=MASS.high, validation_alias=AliasChoices("mass", "M_vir"),
        description="virial mass M_200c in Msun (alias M_vir)",
    )
    scale_radius: float | None = Field(
        None, ge=SCALE_RADIUS.low, le=SCALE_RADIUS.high,
        description="NFW scale radius r_s, physical kpc. Give this or `concentration`, not both; with neither, "
                    "c comes from the Duffy et al. (2008) M200c-c relation at z_lens (parameters.scale_radius_source)")
    concentration: float | None = Field(
        None, ge=CONCENTRATION.low, le=CONCENTRATION.high,
        description="c = r_200 / r_s, instead of scale_radius; the derived r_s need not lie in the 50..500 kpc "
                    "box (the PINN is trained on the box: outside it its estimates extrapolate)")
    ellipticity: float = Field(0.0, ge=ELLIPTICITY.low, le=ELLIPTICITY.high,
                               description="(1-q)/(1+q), q = minor/major axis ratio")
    position_angle: float = Field(0.0, ge=POSITION_ANGLE.low, le=POSITION_ANGLE.high,
                                  description="degrees, counter-clockwise from +x")
    grid_size: GridSize = 64
    scenario: Scenario | None = Field(None, description="dark-matter substructure; null: smooth host")
    seed: Seed | None = Field(None, description="seed of scenario and noise; drawn and reported when null")
    noise_sigma: float = Field(0.0, ge=NOISE_SIGMA.low, le=NOISE_SIGMA.high,
                               description="Gaussian noise added to kappa (per-pixel std)")
    center_x_kpc: float = Field(0.0, ge=-MAX_CENTER_FRACTION * FOV.high, le=MAX_CENTER_FRACTION * FOV.high,
                                description="host centre along x, kpc from the map centre (within half the fov)")
    center_y_kpc: float = Field(0.0, ge=-MAX_CENTER_FRACTION * FOV.high, le=MAX_CENTER_FRACTION * FOV.high,
                                description="host centre along y, kpc from the map centre (within half the fov)")
    ra: float = Field(0.0, ge=RA.low, le=RA.high, description="right ascension of the host centre, degrees "
                      "(ICRS), for the FITS celestial WCS")
    dec: float = Field(0.0, ge=DEC.low, le=DEC.high, description="declination of the host centre, degrees (ICRS)")
    arcsec: bool = Field(False, description="also return the coordinates in arcsec")

    @field_validator("ellipticity")
    @classmethod
    def _round_means_round(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("profile_type") == "NFW" and value != 0:
            raise ValueError("ellipticity must be 0 for profile_type 'NFW'; use 'Elliptical NFW'")
        return value


class Coordinates(BaseModel):
    X: list[list[float]]
    Y: list[list[float]]
    unit: str = "kpc"
    X_arcsec: list[list[float]] | None = None
    Y_arcsec: list[list[float]] | None = None


class SyntheticResponse(BaseModel):
    job_id: str
    convergence_map: list[list[float]]
    coordinates: Coordinates
    metadata: dict[str, Any]
    parameters: dict[str, Any]
    geometry: dict[str, Any]
    timestamp: str


class InferenceOptions(Geometry):
    """Inference settings; query parameters for npy/FITS bodies, fields of the JSON body otherwise."""

    target_size: Integer = Field(64, ge=MAP_SIDE.low, le=MAP_SIDE.high,
                             description="network input size; must equal the model's input_size (GET /api/v1/models)")
    mc_samples: Integer = Field(DEFAULT_MC_SAMPLES, ge=MC_SAMPLES.low, le=MC_SAMPLES.high,
                                description="MC Dropout samples for the uncertainties (the estimate is the "
                                            "deterministic network's at any count); 1 = no uncertainties")
    seed: Seed | None = Field(None, description="dropout seed; drawn and reported when null")
    refine: bool = Field(False, description="refine the estimate with the physics renderer")
    symmetrize: bool = Field(False, description="average the network over the map's eight quarter turns and "
                             "mirror images (intervals calibrated for it): M errors up to 21 % and r_s errors "
                             "4-14 % smaller on the held-out sets, for 8x the compute")
    noise_sigma: float | None = Field(
        None, ge=INFERENCE_NOISE_SIGMA.low, le=INFERENCE_NOISE_SIGMA.high,
        description="per-pixel standard deviation of kappa's noise (0: noiseless); estimated from the map and "
                    "reported when null. The model was trained on 0..0.04")


class InferenceRequest(InferenceOptions):
    """JSON body of /api/v1/inference: a square map of finite numbers, 16..512 pixels a side."""

    model_config = ConfigDict(strict=True)

    convergence_map: MapRows


class ModelRef(BaseModel):
    name: str
    version: str


class Serving(BaseModel):
    batch_size: int = Field(description="maps in the PINN batch this one ran in")
    device: str
    batch_ms: float = Field(description="compute time of that batch, ms")
    computed_in: Literal["pool", "ingress"] = Field(
        description="where the map ran: a PINN pool replica, or the ingress replica that took the request (a lone "
        "plain map on a CPU service: same model and seed, no call to the pool)")


class TrainingDomainCheck(BaseModel):
    """Whether the map and its estimates lie where the model was trained and measured (its card's figures
    hold there); outside, the network extrapolates and its intervals are not calibrated."""

    inside: bool
    outside: dict[str, str] = Field(description="for each estimate (M_vir, r_s, ellipticity, center_x_kpc, "
                                    "center_y_kpc) or input (fov_kpc, z_lens, z_source, noise_sigma) outside the "
                                    "training maps' range: the value and that range")


class InferenceResult(BaseModel):
    """One map's result. `classification` has a probability for each of CDM, WDM, SIDM and "none" (no
    detectable substructure: a smooth halo, or substructure lost in the noise); `predictions` include the
    halo centre (center_x_kpc, center_y_kpc, kpc from the map centre)."""

    predictions: dict[str, float]
    uncertainties: dict[str, float] | None
    classification: dict[str, float]
    predicted_class: str
    entropy: float
    mutual_information: float
    noise_sigma: float = Field(description="per-pixel noise sigma the model was given")
    noise_sigma_source: Literal["given", "estimated"] = Field(description="given in the request, or estimated "
                                                                          "from the map")
    training_domain: TrainingDomainCheck
    mc_samples: int
    refined: bool
    symmetrized: bool = Field(description="the network's eight views of the map were pooled (symmetrize)")


class InferenceResponse(InferenceResult):
    job_id: str
    seed: int
    model: ModelRef
    serving: Serving
    timestamp: str


# Options of /api/v1/inference that a stack may give per map, as a list with one value per map.
PER_MAP_OPTIONS = ("fov_kpc", "z_lens", "z_source", "mc_samples", "seed", "refine", "symmetrize", "noise_sigma")


# one stack option value, with the bounds of the single-map field (documented; each map is checked on its own)
StackFov = Annotated[float, Field(ge=FOV.low, le=FOV.high)]
StackZLens = Annotated[float, Field(ge=Z_LENS.low, le=Z_LENS.high)]
StackZSource = Annotated[float, Field(gt=Z_SOURCE.low, le=Z_SOURCE.high)]
StackMcSamples = Annotated[int, Field(ge=MC_SAMPLES.low, le=MC_SAMPLES.high)]
StackNoiseSigma = Annotated[float, Field(ge=INFERENCE_NOISE_SIGMA.low, le=INFERENCE_NOISE_SIGMA.high)]


class StackRequest(_Model):
    """JSON body of /api/v1/inference for a stack of maps: `convergence_maps` (each a square map, 16..512
    pixels a side) and the options of InferenceRequest, each either one value for every map or a list with
    one value per map. Each map is validated on its own: a bad one gets its own 422 entry in the response."""

    model_config = ConfigDict(strict=True)

    convergence_maps: list[MapRows] = Field(min_length=1)
    target_size: Integer | list[Integer] = 64
    mc_samples: StackMcSamples | list[StackMcSamples] = DEFAULT_MC_SAMPLES
    seed: Seed | None | list[Seed | None] = None
    refine: bool | list[bool] = False
    symmetrize: bool | list[bool] = False
    fov_kpc: StackFov | list[StackFov] = DEFAULT_FOV_KPC
    z_lens: StackZLens | list[StackZLens] = DEFAULT_Z_LENS
    z_source: StackZSource | list[StackZSource] = DEFAULT_Z_SOURCE
    noise_sigma: StackNoiseSigma | None | list[StackNoiseSigma | None] = None


class BatchMap(Geometry):
    model_config = ConfigDict(strict=True)

    convergence_map: MapRows


class BatchRequest(_Model):
    """Items in order: job_ids (earlier synthetic jobs), then synthetic specs, then maps."""

    # At least one item (checked in `Ingress.submit_batch`), stated in the OpenAPI document too.
    model_config = ConfigDict(strict=True, json_schema_extra={"anyOf": [
        {"required": [name], "properties": {name: {"minItems": 1}}} for name in ("job_ids", "synthetic", "maps")]})

    job_ids: list[str] = []
    synthetic: list[SyntheticRequest] = []
    maps: list[BatchMap] = []
    mc_samples: Integer = Field(DEFAULT_MC_SAMPLES, ge=MC_SAMPLES.low, le=MC_SAMPLES.high)
    seed: Seed | None = Field(None, description="base seed; item k uses seed + k")
    refine: bool = False
    symmetrize: bool = Field(False, description="pool the network over each map's eight quarter turns and mirror "
                             "images, as for /api/v1/inference (8x the compute)")


class BatchSubmitted(BaseModel):
    batch_id: str
    message: str
    status_url: str
    total: int
    job_ids: list[str]


class BatchItem(BaseModel):
    index: int
    job_id: str
    source: Literal["job", "synthetic", "map"]
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None


class BatchStatus(BaseModel):
    batch_id: str
    status: Literal["queued", "running", "completed", "failed"]
    progress: float = Field(description="percent of items finished")
    total: int
    completed: int
    failed: int
    results: list[BatchItem]
    error: str | None = None
    created: str
    updated: str


class JobRecord(BaseModel):
    job_id: str
    kind: str
    status: str
    batch_id: str | None = None
    created: str
    updated: str
    request: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None


class Stats(BaseModel):
    total_jobs: int
    active_jobs: int
    completed_jobs: int
    failed_jobs: int
    total_batches: int
    active_batches: int
    requests: dict[str, dict[str, int]] = Field(description="endpoint -> status code -> count")
    model_loaded: bool
    gpu_available: bool
    timestamp: str


PackageVersion = Annotated[str, Field(description="the installed lensing-serve release (pyproject.toml)")]
ApiVersion = Annotated[str, Field(description="the HTTP API's major version, as in the /api/v1 paths")]
ModelVersion = Annotated[str | None, Field(description="the served model's version (its card); null while no model "
                                                       "is loaded")]


class Health(BaseModel):
    status: Literal["healthy", "degraded"]
    timestamp: str
    version: str = Field(description="the original specification's field: the package version (= package_version)")
    package_version: PackageVersion
    api_version: ApiVersion
    model_version: ModelVersion
    gpu_available: bool
    model_loaded: bool


class ModelInput(BaseModel):
    size: list[int] = Field(description="the network's input, [side, side] pixels; other sides are resampled to it")
    accepted_sides: list[int] = Field(description="[smallest, largest] side of the square maps /inference accepts")
    units: dict[str, str] = Field(description="what the map and its geometry options are measured in")


class ModelClass(BaseModel):
    name: str
    description: str | None = Field(None, description="what the class means, from the model card (when it says)")


class ModelInfo(BaseModel):
    """A summary of the served model; the full card (training, calibration, every metric) is at card_url."""

    name: str
    version: str = Field(description="the model's version, from its card (= model_version of /health)")
    description: str = "Physics-informed neural network for lensing analysis, with calibrated MC Dropout"
    sha256: str = Field("", description="SHA-256 of the weights file, as the card records it")
    input_size: list[int] = Field(description="the network's input size, [side, side] (= input.size)")
    input: ModelInput
    output_parameters: list[str]
    output_units: dict[str, str] = Field(description="parameter -> its unit, for output_parameters")
    class_names: list[str]
    classes: list[ModelClass]
    metrics: dict[str, Any] = Field({}, description="headline metrics on the smooth held-out set (network alone) "
                                                    "and the scenario accuracy; the card has every set")
    training_domain: dict[str, str] = Field({}, description="where the model was trained and measured: the host "
                                            "box, geometries, noise and centre offsets; a result outside it says so "
                                            "in its training_domain")
    device: str
    loaded: bool = True
    card_url: str = Field(description="the full model card")


class Models(BaseModel):
    models: list[ModelInfo]
    package_version: PackageVersion
    api_version: ApiVersion


class Root(BaseModel):
    message: str
    version: str = Field(description="the package version (= package_version)")
    package_version: PackageVersion
    api_version: ApiVersion
    model_version: ModelVersion
    docs: str
    health: str
    models: str
    openapi: str


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Error(BaseModel):
    detail: str | list[ErrorItem]
    request_id: str | None = Field(None, description="on a 500: the id under which the error was logged")


class StackEntry(BaseModel):
    """One map of a stack: its result (status 200) or why it has none (status 422 or 500, `detail`)."""

    index: int
    status: int = Field(description="200, 422 (this map is invalid) or 500 (an internal fault)")
    seed: int | None = None
    detail: list[ErrorItem] | str | None = None
    predictions: dict[str, float] | None = None
    uncertainties: dict[str, float] | None = None
    classification: dict[str, float] | None = None
    predicted_class: str | None = None
    entropy: float | None = None
    mutual_information: float | None = None
    noise_sigma: float | None = None
    noise_sigma_source: Literal["given", "estimated"] | None = None
    training_domain: TrainingDomainCheck | None = None
    mc_samples: int | None = None
    refined: bool | None = None
    symmetrized: bool | None = None


class StackResponse(BaseModel):
    """/api/v1/inference for a stack: one entry per map, in order. Status 200 when every map has a result,
    207 when some do, 422 when every map is invalid (500 when every map failed and one of them by our fault)."""

    job_id: str
    count: int
    succeeded: int
    failed: int
    results: list[StackEntry]
    detail: str | None = Field(None, description="on a 422 or 500, when no map has a result: a summary")
    model: ModelRef
    timestamp: str
