"""Input limits of Lensing Serve and the one error type for bad input (docs/design.md, "Input limits").

Every range a caller can hit lives here once: the API parameter box of the original specification, the
geometry (field of view, redshifts), the model's input domain (map side, |kappa|, MC samples) and the
profiles' validity ranges. The physics core checks its arguments with these objects, the HTTP schemas
derive their pydantic bounds from them (`Range.bounds`), and the messages name the field the same way
everywhere. This module imports nothing heavy (no torch, no astropy), so a schema can use it freely.

`InputError` is what every check raises: a `ValueError` that carries the name of the offending field
(the library's name, e.g. `M_vir`; the HTTP layer maps names to its own through one table). Any other
exception inside the core is a fault of ours, not of the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np


class InputError(ValueError):
    """Bad input: `field` names the parameter (the library's name), the message says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Range:
    """A closed interval [low, high] (open at `low` when `low_open`), with the unit used in messages."""

    low: float
    high: float
    unit: str = ""
    low_open: bool = False

    @property
    def endpoints(self) -> tuple[float, float]:
        """(low, high), e.g. for sampling over the range."""
        return (self.low, self.high)

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return bool(above and value <= self.high)

    def text(self) -> str:
        """'[1e+11, 1e+14] Msun' or '(0, 20]'."""
        interval = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{interval} {self.unit}".rstrip()

    def check(self, field: str, value: object) -> float:
        """`value` as a float if it is a finite real number inside the range, else InputError naming `field`."""
        number = as_real(field, value)
        if not math.isfinite(number) or number not in self:
            raise InputError(field, f"{field} must be in {self.text()}, got {value!r}")
        return number


def as_real(field: str, value: object) -> float:
    """`value` as a float when it is a real number (bool is not), else InputError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.integer, np.floating)):
        raise InputError(field, f"{field} must be a number, got {value!r}")
    return float(value)


def check_finite(field: str, value: object) -> float:
    """`value` as a float when it is a finite real number, else InputError naming `field`."""
    number = as_real(field, value)
    if not math.isfinite(number):
        raise InputError(field, f"{field} must be a finite number, got {value!r}")
    return number


def check_finite_positive(field: str, value: object) -> float:
    """`value` as a float when it is finite and > 0, else InputError naming `field`."""
    number = as_real(field, value)
    if not math.isfinite(number) or number <= 0:
        raise InputError(field, f"{field} must be a finite positive number, got {value!r}")
    return number


def check_integer(field: str, value: object, allowed: Range | tuple[int, ...]) -> int:
    """`value` as an int when it is an integer inside `allowed` (a range or a set of values), else InputError."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.integer, np.floating)) or \
            not math.isfinite(float(value)) or int(value) != value:  # type: ignore[arg-type]
        raise InputError(field, f"{field} must be an integer, got {value!r}")
    number = int(value)  # type: ignore[arg-type]
    if isinstance(allowed, Range):
        allowed.check(field, number)
    elif number not in allowed:
        raise InputError(field, f"{field} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return number


def check_choice(field: str, value: object, choices: tuple[str, ...], optional: bool = False) -> None:
    """InputError naming `field` unless `value` is one of `choices` (or None when `optional`)."""
    if value is None and optional:
        return
    if value not in choices:
        suffix = " or null" if optional else ""
        raise InputError(field, f"{field} must be one of {', '.join(choices)}{suffix}, got {value!r}")


# --- the host halo: the API parameter box of the original specification ---------------------------
MASS = Range(1e11, 1e14, "Msun")  # M_vir = M_200c
SCALE_RADIUS = Range(50.0, 500.0, "kpc")  # physical
ELLIPTICITY = Range(0.0, 0.5)  # e = (1 - q) / (1 + q)
POSITION_ANGLE = Range(-360.0, 360.0, "deg")  # counter-clockwise from +x
CONCENTRATION = Range(1.0, 50.0)  # c = r_200 / r_s, an alternative to giving r_s
# r_s of a host whose r_s is derived (from c, or from a mass-concentration relation) rather than given: the
# box's 50 kpc floor excludes realistic galaxy-scale halos (c ~ 5-10 below 2e12 Msun), so derived radii
# need only be physical. The PINN is trained on the box; outside it its estimates are extrapolations.
DERIVED_SCALE_RADIUS = Range(1.0, 5000.0, "kpc")

# --- profiles (subhalos and internal use go beyond the API box) -----------------------------------
PROFILE_ELLIPTICITY = Range(0.0, 0.99)
CORE_FRACTION = Range(1e-4, 0.9)  # SIDM core radius / r_s

# --- geometry -------------------------------------------------------------------------------------
# From a galaxy's core to a supercluster; far outside, the mass conversion underflows.
FOV = Range(1.0, 1e5, "kpc")
# The nearest lens we model is 4 Mpc away: closer, D_l -> 0 makes Sigma_cr -> infinity and nothing
# observable is lensed. The upper bounds are far beyond any observed lens or source.
Z_LENS = Range(1e-3, 10.0)
Z_SOURCE = Range(0.0, 20.0, low_open=True)
H0 = Range(0.0, 1000.0, "km/s/Mpc", low_open=True)
OM0 = Range(0.0, 1.0, low_open=True)

# --- where the halo sits ---------------------------------------------------------------------------
# The host's centre relative to the map centre, per axis, in units of the field of view: at most half of
# it, so the centre stays on the map (training and evaluation use offsets up to 0.1 of the field).
MAX_CENTER_FRACTION = 0.5
RA = Range(0.0, 360.0, "deg")  # right ascension of the halo centre (ICRS)
DEC = Range(-90.0, 90.0, "deg")  # declination of the halo centre (ICRS)

# --- synthetic maps -------------------------------------------------------------------------------
GRID_SIZES = (32, 64, 128)  # what /api/v1/synthetic generates (the original specification)
GRID_SIZE = Range(8, 1024, "px")  # what the library renders
NOISE_SIGMA = Range(0.0, 10.0)  # per-pixel standard deviation of Gaussian noise on kappa
MAX_SEED = 2**63 - 1

# --- the model's input domain ---------------------------------------------------------------------
MAP_SIDE = Range(16, 512, "px")  # square maps of any side in this range are resampled to the network's input
# |kappa| at most this. Physical maps stay below ~1e2 even at a cusp pixel (noise included); far beyond,
# the float32 input normalisation overflows and the estimate is meaningless.
MAX_ABS_KAPPA = 1e4
MC_SAMPLES = Range(1, 1000)
# Per-pixel standard deviation of kappa given with a map at inference (0: a noiseless map); training covers
# 0..0.04, larger values are accepted and reported but lie outside what the model has seen.
INFERENCE_NOISE_SIGMA = Range(0.0, 10.0)
DEFAULT_MC_SAMPLES = 50


def check_redshifts(z_lens: object, z_source: object) -> tuple[float, float]:
    """(z_lens, z_source) as floats inside their ranges with the source behind the lens, else InputError."""
    lens, source = Z_LENS.check("z_lens", z_lens), Z_SOURCE.check("z_source", z_source)
    if source <= lens:
        raise InputError("z_source", f"z_source ({source:g}) must be larger than z_lens ({lens:g})")
    return lens, source


def check_center(field: str, value: object, fov_kpc: float) -> float:
    """A halo-centre coordinate (kpc from the map centre) as a float, within half the field of view."""
    number = as_real(field, value)
    limit = MAX_CENTER_FRACTION * fov_kpc
    if not math.isfinite(number) or abs(number) > limit:
        raise InputError(field, f"{field} must be within +-{limit:g} kpc (half the field of view), got {value!r}")
    return number


def check_maps(maps: object, field: str = "convergence_map") -> np.ndarray:
    """(B, N, N) float64 array of finite square maps inside the model's input domain, else InputError."""
    array = np.asarray(maps)
    if array.dtype.kind not in "fiu":
        raise InputError(field, f"{field} must be numeric, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != array.shape[2]:
        raise InputError(field, f"{field} must be square 2-D maps, got shape {array.shape[-2:]}")
    side = array.shape[-1]
    if side not in MAP_SIDE:
        raise InputError(field, f"{field} size must be {MAP_SIDE.low:g}..{MAP_SIDE.high:g} pixels a side, got {side}")
    if not np.isfinite(array).all():
        raise InputError(field, f"{field} contains NaN or Inf")
    check_kappa_domain(array, field)
    return array.astype(np.float64, copy=False)


def check_kappa_domain(array: np.ndarray, field: str = "convergence_map") -> None:
    """InputError unless every |kappa| is at most MAX_ABS_KAPPA (the model's input domain)."""
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > MAX_ABS_KAPPA:
        raise InputError(field, f"{field} values must lie within +-{MAX_ABS_KAPPA:g} (the model's input domain), "
                                f"got {largest:.3g}")
