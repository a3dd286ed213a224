"""Bad input raises a ValueError whose message names the offending parameter (docs/design.md section 3 and 6)."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from lensing import (
    NFW,
    CoredNFW,
    EllipticalNFW,
    HaloParameters,
    MapRequest,
    TruncatedNFW,
    generate_batch,
    lens_geometry,
)
from lensing.grid import pixel_grid
from lensing.halo import DUFFY_2008
from lensing.limits import ELLIPTICITY, MASS, SCALE_RADIUS
from lensing.profiles import host_profile
from lensing.scenarios import draw_scenario
from lensing.synthetic import generate_map, sample_hosts

MASS_RANGE, SCALE_RADIUS_RANGE, ELLIPTICITY_RANGE = MASS.endpoints, SCALE_RADIUS.endpoints, ELLIPTICITY.endpoints

NAN, INF = math.nan, math.inf


def outside(bounds: tuple[float, float]) -> list[float]:
    low, high = bounds
    return [low - 0.01 * abs(low) - 1e-3, high + 0.01 * abs(high) + 1e-3]


BAD_REQUESTS = (
    [("M_vir", v) for v in [*outside(MASS_RANGE), NAN, INF, -INF, -1e12, 0.0, "heavy", None]]
    + [("scale_radius", v) for v in [*outside(SCALE_RADIUS_RANGE), NAN, INF, -200.0, 0.0]]
    + [("concentration", v) for v in [0.5, 51.0, NAN, INF, -5.0, "8"]]
    + [("grid_size", v) for v in [0, 4, 2048, 64.5, NAN, INF, None, "64", True]]
    + [("fov_kpc", v) for v in [0.0, -1000.0, 1.7e-117, 0.5, 2e5, NAN, INF, True]]
    + [("position_angle", v) for v in [NAN, INF, 1e4]]
    + [("noise_sigma", v) for v in [-0.1, NAN, INF]]
    + [("profile_type", v) for v in ["SIS", "nfw", "", None]]
    + [("scenario", v) for v in ["FDM", "cdm", 1]]
    + [("seed", v) for v in [-1, 1.5, "7"]]
    + [("z_lens", v) for v in [0.0, -0.5, 5e-324, 1e-4, NAN, INF]]
    + [("z_source", v) for v in [0.5, 0.3, NAN, INF]]  # z_lens = 0.5: z_source <= z_lens is invalid
    + [("center_x_kpc", v) for v in [500.1, -600.0, NAN, INF, "0", None]]  # fov 1000: at most 500 kpc
    + [("center_y_kpc", v) for v in [-500.1, 1e4, NAN, INF, True]]
    + [("ra", v) for v in [-0.1, 360.0, 400.0, NAN, None]]
    + [("dec", v) for v in [-90.5, 91.0, NAN, INF, "north"]]
)


@pytest.mark.parametrize("field,value", BAD_REQUESTS)
def test_map_request_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MapRequest(**{field: value})


@pytest.mark.parametrize("value", [*outside(ELLIPTICITY_RANGE), NAN, INF])
def test_map_request_rejects_bad_ellipticity(value):
    with pytest.raises(ValueError, match="ellipticity"):
        MapRequest(profile_type="Elliptical NFW", ellipticity=value)


def test_spherical_profile_refuses_an_ellipticity():
    with pytest.raises(ValueError, match="ellipticity"):
        MapRequest(profile_type="NFW", ellipticity=0.2)


def test_valid_edges_of_the_box_are_accepted():
    for mass in MASS_RANGE:
        for r_s in SCALE_RADIUS_RANGE:
            for e in ELLIPTICITY_RANGE:
                MapRequest("Elliptical NFW", mass, r_s, e, grid_size=32, seed=np.int64(3), z_lens=0.1, z_source=0.11)


def test_z_source_at_or_below_z_lens_names_z_source():
    for z_lens, z_source in [(0.5, 0.5), (1.0, 0.6)]:
        with pytest.raises(ValueError, match="z_source"):
            lens_geometry(z_lens, z_source)


def test_core_objects_reject_bad_values_naming_the_parameter():
    g = lens_geometry()
    halo = HaloParameters(1e12, 100.0, g)
    cases = [
        ("M_vir", lambda: HaloParameters(-1e12, 100.0, g)),
        ("M_vir", lambda: HaloParameters(NAN, 100.0, g)),
        ("scale_radius", lambda: HaloParameters(1e12, INF, g)),
        ("concentration", lambda: HaloParameters.from_mass_concentration(1e12, -3.0, g)),
        ("kappa_s", lambda: NFW(NAN, 100.0)),
        ("scale_radius", lambda: NFW(0.1, -5.0)),
        ("ellipticity", lambda: EllipticalNFW(0.1, 100.0, 1.0)),
        ("core_fraction", lambda: CoredNFW(0.1, 100.0, NAN)),
        ("tau", lambda: TruncatedNFW(0.1, 10.0, -1.0)),
        ("profile_type", lambda: host_profile("SIS", halo)),
        ("ellipticity", lambda: host_profile("Elliptical NFW", halo, ellipticity=0.9)),
        ("scenario", lambda: draw_scenario("FDM", halo)),
        ("grid_size", lambda: pixel_grid(0)),
        ("fov_kpc", lambda: pixel_grid(64, NAN)),
        ("fov_kpc", lambda: generate_batch(sample_hosts(2, rng=0), grid_size=16, fov_kpc=-1.0)),
        ("z_lens", lambda: lens_geometry(NAN, 2.0)),
        ("H0", lambda: lens_geometry(0.5, 2.0, H0=-70.0)),
        ("Om0", lambda: lens_geometry(0.5, 2.0, Om0=1.5)),
    ]
    for name, make in cases:
        with pytest.raises(ValueError, match=name):
            make()


def test_a_host_takes_r_s_or_c_or_the_duffy_relation_and_not_both():
    duffy = MapRequest(M_vir=1e13)  # neither given: c from Duffy et al. (2008) at z_lens = 0.5, h = 0.7
    assert duffy.scale_radius_source == DUFFY_2008
    c_duffy = 5.71 * (1e13 / (2e12 / 0.7)) ** -0.084 * 1.5 ** -0.47
    assert generate_map(MapRequest(M_vir=1e13, grid_size=16)).parameters()["concentration"] == pytest.approx(c_duffy)
    derived = MapRequest(M_vir=2e12, concentration=8.0)
    assert derived.scale_radius < SCALE_RADIUS.low and derived.scale_radius_source == "concentration"
    with pytest.raises(ValueError, match="scale_radius"):  # the same r_s given directly is outside the box
        MapRequest(M_vir=2e12, scale_radius=derived.scale_radius)
    assert MapRequest(**asdict(derived)) == derived  # a resolved request rebuilds to itself (batch items)
    with pytest.raises(ValueError, match="concentration"):
        MapRequest(M_vir=2e12, scale_radius=200.0, concentration=8.0)
