"""Synthetic convergence maps: one exact float64 map, or large batches rendered in torch.

`generate_map` serves the API's /synthetic (map, X, Y in kpc, metadata, parameters, geometry);
`sample_hosts` + `generate_batch` serve training, sweeps and benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .cosmology import DEFAULT_Z_LENS, DEFAULT_Z_SOURCE, LensGeometry, lens_geometry
from .grid import DEFAULT_FOV_KPC, check_fov, pixel_grid
from .halo import (
    SCALE_RADIUS_SOURCES,
    HaloParameters,
    characteristic_density,
    check_host_box,
    r200_from_mass,
    resolve_scale_radius,
)
from .limits import (
    DEC,
    DERIVED_SCALE_RADIUS,
    ELLIPTICITY,
    GRID_SIZE,
    MASS,
    MAX_CENTER_FRACTION,
    NOISE_SIGMA,
    POSITION_ANGLE,
    RA,
    SCALE_RADIUS,
    InputError,
    check_center,
    check_choice,
    check_integer,
)
from .profiles import PROFILE_TYPES, TruncatedNFW, check_round_nfw, host_profile
from .render import add_subhalos, render_hosts
from .scenarios import SCENARIOS, ScenarioRealisation, draw_scenario

NO_SCENARIO = -1  # class id of a smooth host


@dataclass(frozen=True)
class MapRequest:
    """Everything that defines one synthetic map; validated on construction (ValueError names the field)."""

    profile_type: str = "NFW"
    M_vir: float = 1e12
    # r_s is given, or derived from `concentration`, or (neither given) from the Duffy et al. (2008)
    # relation at z_lens; construction resolves it, and `scale_radius_source` says which it was
    scale_radius: float | None = None
    ellipticity: float = 0.0
    position_angle: float = 0.0  # degrees, counter-clockwise from +x
    grid_size: int = 64
    fov_kpc: float = DEFAULT_FOV_KPC
    z_lens: float = DEFAULT_Z_LENS
    z_source: float = DEFAULT_Z_SOURCE
    scenario: str | None = None
    seed: int | None = None
    noise_sigma: float = 0.0
    center_x_kpc: float = 0.0  # host centre, kpc from the map centre along x (at most half the fov)
    center_y_kpc: float = 0.0
    ra: float = 0.0  # sky position of the host centre (ICRS degrees), for the FITS celestial WCS
    dec: float = 0.0
    concentration: float | None = None  # c = r_200 / r_s, an alternative to scale_radius
    scale_radius_source: str | None = None  # set on construction: "scale_radius", "concentration" or DUFFY_2008

    def __post_init__(self) -> None:
        check_choice("profile_type", self.profile_type, PROFILE_TYPES)
        self._resolve_scale_radius()
        check_round_nfw(self.profile_type, self.ellipticity)
        POSITION_ANGLE.check("position_angle", self.position_angle)
        check_integer("grid_size", self.grid_size, GRID_SIZE)
        check_fov(self.fov_kpc)
        check_center("center_x_kpc", self.center_x_kpc, self.fov_kpc)
        check_center("center_y_kpc", self.center_y_kpc, self.fov_kpc)
        if self.ra == 360.0:
            raise InputError("ra", "ra must be in [0, 360) deg, got 360.0")
        RA.check("ra", self.ra)
        DEC.check("dec", self.dec)
        check_choice("scenario", self.scenario, SCENARIOS, optional=True)
        NOISE_SIGMA.check("noise_sigma", self.noise_sigma)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0
        ):
            raise InputError("seed", f"seed must be a non-negative integer or null, got {self.seed!r}")
        lens_geometry(self.z_lens, self.z_source)  # validates the redshifts

    def _resolve_scale_radius(self) -> None:
        """Fix r_s and its source. A given r_s must lie in the API box (the PINN's training range); a derived
        one only needs to be physical (DERIVED_SCALE_RADIUS): realistic galaxy halos have r_s below the box.
        A request rebuilt from a resolved one (asdict) keeps its r_s and source."""
        source = self.scale_radius_source
        if self.scale_radius is None or self.concentration is not None:
            r_s, source = resolve_scale_radius(self.M_vir, self.geometry, self.scale_radius, self.concentration)
            object.__setattr__(self, "scale_radius", r_s)
            object.__setattr__(self, "concentration", None)  # parameters() reports the halo's c
        check_choice("scale_radius_source", source, SCALE_RADIUS_SOURCES, optional=True)
        object.__setattr__(self, "scale_radius_source", source or "scale_radius")
        if self.scale_radius_source == "scale_radius":
            check_host_box(self.M_vir, self.r_s, self.ellipticity)
        else:  # the box's mass and ellipticity still hold; r_s has its own, wider range
            MASS.check("M_vir", self.M_vir)  # also for a request rebuilt from a resolved one
            ELLIPTICITY.check("ellipticity", self.ellipticity)
            DERIVED_SCALE_RADIUS.check("scale_radius", self.scale_radius)

    @property
    def r_s(self) -> float:
        """The resolved scale radius, kpc."""
        assert self.scale_radius is not None  # resolved on construction
        return self.scale_radius

    @property
    def geometry(self) -> LensGeometry:
        return lens_geometry(self.z_lens, self.z_source)


@dataclass
class SyntheticMap:
    """A generated map with its grid (kpc), the halo it came from and its scenario draw."""

    request: MapRequest
    convergence: np.ndarray
    x_kpc: np.ndarray
    y_kpc: np.ndarray
    halo: HaloParameters
    scenario: ScenarioRealisation | None = None
    noise: np.ndarray | None = field(default=None, repr=False)

    @property
    def geometry(self) -> LensGeometry:
        return self.halo.geometry

    @property
    def pixel_scale_kpc(self) -> float:
        return self.request.fov_kpc / self.request.grid_size

    def coordinates_arcsec(self) -> tuple[np.ndarray, np.ndarray]:
        return self.geometry.kpc_to_arcsec(self.x_kpc), self.geometry.kpc_to_arcsec(self.y_kpc)

    def parameters(self) -> dict:
        """True host parameters and derived NFW quantities."""
        return {
            "M_vir": self.halo.M_vir,
            "scale_radius": self.halo.r_s,
            "scale_radius_source": self.request.scale_radius_source,
            "ellipticity": self.request.ellipticity,
            "position_angle": self.request.position_angle,
            "center_x_kpc": self.request.center_x_kpc,
            "center_y_kpc": self.request.center_y_kpc,
            "concentration": self.halo.concentration,
            "r200_kpc": self.halo.r200,
            "rho_s": self.halo.rho_s,
            "kappa_s": self.halo.kappa_s,
            "scenario": self.request.scenario,
            "core_fraction": self.scenario.core_fraction if self.scenario else None,
            "n_subhalos": len(self.scenario.subhalos) if self.scenario else 0,
        }

    def geometry_dict(self) -> dict:
        g = self.geometry
        return {
            "z_lens": g.z_lens,
            "z_source": g.z_source,
            "H0": g.H0,
            "Om0": g.Om0,
            "fov_kpc": self.request.fov_kpc,
            "grid_size": self.request.grid_size,
            "pixel_scale_kpc": self.pixel_scale_kpc,
            "pixel_scale_arcsec": g.kpc_to_arcsec(self.pixel_scale_kpc),
            "sigma_crit_msun_per_kpc2": g.sigma_crit,
            "D_l_kpc": g.D_l_kpc,
            "D_s_kpc": g.D_s_kpc,
            "D_ls_kpc": g.D_ls_kpc,
        }

    def metadata(self) -> dict:
        """The original specification's metadata block (min/max/mean) plus the request."""
        return {
            "profile_type": self.request.profile_type,
            "mass": self.halo.M_vir,
            "grid_size": self.request.grid_size,
            "min_value": float(self.convergence.min()),
            "max_value": float(self.convergence.max()),
            "mean_value": float(self.convergence.mean()),
            "request": asdict(self.request),
        }


def generate_map(request: MapRequest) -> SyntheticMap:
    """Render one map exactly (float64): host, optional scenario, optional Gaussian noise."""
    geometry = request.geometry
    halo = HaloParameters(request.M_vir, request.r_s, geometry)
    rng = np.random.default_rng(request.seed)
    centre = (request.center_x_kpc, request.center_y_kpc)
    scenario = (
        draw_scenario(request.scenario, halo, request.ellipticity, request.position_angle, rng, *centre)
        if request.scenario
        else None
    )
    x, y = pixel_grid(request.grid_size, request.fov_kpc)
    host = host_profile(
        request.profile_type,
        halo,
        request.ellipticity,
        request.position_angle,
        core_fraction=scenario.core_fraction if scenario else None,
        center_x=centre[0],
        center_y=centre[1],
    )
    kappa = host.convergence_map(request.grid_size, request.fov_kpc)
    if scenario is not None:
        sub = scenario.subhalos
        for k in range(len(sub)):
            kappa = kappa + TruncatedNFW(sub.kappa_s[k], sub.r_s[k], sub.tau[k], sub.x[k], sub.y[k]).convergence(x, y)
    noise = None
    if request.noise_sigma > 0:
        noise = rng.normal(0.0, request.noise_sigma, kappa.shape)
        kappa = kappa + noise
    return SyntheticMap(request, kappa, x, y, halo, scenario, noise)


# --- batches -------------------------------------------------------------------------------------


@dataclass
class HostBatch:
    """Host parameters of a batch of maps, one entry per map (numpy arrays of shape (B,)).

    The centre (kpc from the map centre) defaults to zeros: every host centred on its map.
    """

    M_vir: np.ndarray
    scale_radius: np.ndarray
    ellipticity: np.ndarray
    position_angle: np.ndarray  # degrees
    scenario: np.ndarray  # class id per map, NO_SCENARIO (-1) for a smooth host
    seed: np.ndarray
    center_x_kpc: np.ndarray | None = None
    center_y_kpc: np.ndarray | None = None

    def __post_init__(self) -> None:
        zeros = np.zeros(np.shape(self.M_vir))
        self.center_x_kpc = zeros if self.center_x_kpc is None else np.asarray(self.center_x_kpc, np.float64)
        self.center_y_kpc = zeros.copy() if self.center_y_kpc is None else np.asarray(self.center_y_kpc, np.float64)

    def __len__(self) -> int:
        return int(self.M_vir.size)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) host centres in kpc from the map centre (zeros unless given)."""
        assert self.center_x_kpc is not None and self.center_y_kpc is not None  # filled in on construction
        return self.center_x_kpc, self.center_y_kpc

    def subset(self, index) -> HostBatch:
        return HostBatch(**{k: np.asarray(v)[index] for k, v in asdict(self).items()})


def sample_hosts(
    n: int,
    rng: np.random.Generator | int | None = None,
    scenario_probability: float = 0.0,
    mass_range: tuple[float, float] = MASS.endpoints,
    scale_radius_range: tuple[float, float] = SCALE_RADIUS.endpoints,
    ellipticity_range: tuple[float, float] = ELLIPTICITY.endpoints,
) -> HostBatch:
    """Draw hosts over the box: M_vir and r_s log-uniform, e uniform, position angle uniform in [0, 180).

    A fraction `scenario_probability` of the maps gets a scenario, the three classes equally often.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    log_mass = rng.uniform(np.log10(mass_range[0]), np.log10(mass_range[1]), n)
    log_rs = rng.uniform(np.log10(scale_radius_range[0]), np.log10(scale_radius_range[1]), n)
    ellipticity = rng.uniform(*ellipticity_range, n)
    angle = rng.uniform(0.0, 180.0, n)
    scenario = np.where(rng.random(n) < scenario_probability, rng.integers(0, len(SCENARIOS), n), NO_SCENARIO)
    seed = rng.integers(0, 2**62, n)
    return HostBatch(10**log_mass, 10**log_rs, ellipticity, angle, scenario, seed)


def kappa_s_of(M_vir: np.ndarray, scale_radius: np.ndarray, geometry: LensGeometry) -> np.ndarray:
    """Vectorised kappa_s for arrays of M_200c and r_s (kpc)."""
    concentration = r200_from_mass(M_vir, geometry.rho_crit) / scale_radius
    return characteristic_density(concentration, geometry.rho_crit) * scale_radius / geometry.sigma_crit


def draw_batch_scenarios(hosts: HostBatch, geometry: LensGeometry) -> dict[int, ScenarioRealisation]:
    """Each scenario map's draw (by map index), from the map's own seed: what `generate_batch` renders."""
    center_x, center_y = hosts.centres()
    draws = {}
    for k in np.flatnonzero(hosts.scenario >= 0):
        halo = HaloParameters(float(hosts.M_vir[k]), float(hosts.scale_radius[k]), geometry)
        draws[int(k)] = draw_scenario(
            SCENARIOS[hosts.scenario[k]], halo, float(hosts.ellipticity[k]), float(hosts.position_angle[k]),
            np.random.default_rng(int(hosts.seed[k])), float(center_x[k]), float(center_y[k]),
        )
    return draws


def generate_batch(
    hosts: HostBatch,
    grid_size: int = 64,
    fov_kpc: float = DEFAULT_FOV_KPC,
    geometry: LensGeometry | None = None,
    noise_sigma: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    draws: dict[int, ScenarioRealisation] | None = None,
) -> torch.Tensor:
    """Render a batch of maps (B, N, N) in torch: hosts (at their centres), their scenario draws, optional noise.

    Scenario draws use each map's own seed, so map k equals `generate_map` for the same parameters; a
    caller that needs the draws too passes those of `draw_batch_scenarios`.
    """
    geometry = geometry or lens_geometry()
    check_fov(fov_kpc)
    center_x, center_y = hosts.centres()
    for name, centre in (("center_x_kpc", center_x), ("center_y_kpc", center_y)):
        largest = float(np.abs(centre).max()) if len(hosts) else 0.0
        if not largest <= MAX_CENTER_FRACTION * fov_kpc:
            raise InputError(name, f"{name} must be within +-{MAX_CENTER_FRACTION * fov_kpc:g} kpc (half the "
                                   f"field of view), got {largest:g}")
    as_tensor = lambda a: torch.as_tensor(np.asarray(a, np.float64), dtype=dtype, device=device)  # noqa: E731
    kappa_s = kappa_s_of(hosts.M_vir, hosts.scale_radius, geometry)
    core = np.zeros(len(hosts))
    sub_index, sub_params = [], []
    for k, draw in (draw_batch_scenarios(hosts, geometry) if draws is None else draws).items():
        core[k] = draw.core_fraction or 0.0
        s = draw.subhalos
        sub_index.append(np.full(len(s), k))
        sub_params.append(np.stack([s.x, s.y, s.kappa_s, s.r_s, s.tau]))
    maps = render_hosts(
        as_tensor(kappa_s),
        as_tensor(hosts.scale_radius / fov_kpc),
        as_tensor(hosts.ellipticity),
        as_tensor(np.radians(hosts.position_angle)),
        grid_size,
        core_fraction=as_tensor(core) if core.any() else None,
        center_x_over_fov=as_tensor(center_x / fov_kpc) if center_x.any() else None,
        center_y_over_fov=as_tensor(center_y / fov_kpc) if center_y.any() else None,
    )
    if sub_index:
        index = torch.as_tensor(np.concatenate(sub_index), dtype=torch.long, device=device)
        x, y, ks, rs, tau = np.concatenate(sub_params, axis=1)
        maps = add_subhalos(maps, index, as_tensor(x / fov_kpc), as_tensor(y / fov_kpc), as_tensor(ks),
                            as_tensor(rs / fov_kpc), as_tensor(tau))
    if noise_sigma > 0:
        maps = maps + noise_sigma * torch.randn(maps.shape, dtype=dtype, device=device, generator=generator)
    return maps
