"""Physical invariants of the maps, numerical robustness, and numpy / torch agreement (docs/design.md section 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from lensing import NFW, CoredNFW, EllipticalNFW, HaloParameters, MapRequest, TruncatedNFW, generate_map, lens_geometry
from lensing.grid import pixel_grid
from lensing.halo import DELTA_CRIT, mass_from_lensing
from lensing.limits import MASS, SCALE_RADIUS

MASS_RANGE, SCALE_RADIUS_RANGE = MASS.endpoints, SCALE_RADIUS.endpoints
from lensing.nfw_math import (
    X_MIN,
    cored_nfw_projected,
    nfw_enclosed,
    nfw_mass_function,
    nfw_projected,
    truncated_nfw_projected,
)
from lensing.render import add_subhalos, render_hosts
from lensing.scenarios import SCENARIOS
from lensing.synthetic import NO_SCENARIO, HostBatch, generate_batch, kappa_s_of, sample_hosts


def random_hosts(seed: int, n: int) -> list[tuple[float, float, float, float]]:
    """(M_vir, r_s, e, phi_deg) over the whole API box."""
    rng = np.random.default_rng(seed)
    mass = 10 ** rng.uniform(*np.log10(MASS_RANGE), n)
    r_s = 10 ** rng.uniform(*np.log10(SCALE_RADIUS_RANGE), n)
    return list(zip(mass, r_s, rng.uniform(0.0, 0.5, n), rng.uniform(-180.0, 180.0, n)))


# --- mass ------------------------------------------------------------------------------------------


def test_halo_parameters_follow_the_m200c_definition():
    """4 pi rho_s r_s^3 m(c) = M_vir, and the mean density inside r_200 is 200 rho_crit(z_lens)."""
    for z_lens, z_source in [(0.5, 2.0), (0.2, 1.0)]:
        g = lens_geometry(z_lens, z_source)
        for mass, r_s, _, _ in random_hosts(seed=3, n=8):
            halo = HaloParameters(mass, r_s, g)
            m_3d = 4 * math.pi * halo.rho_s * r_s**3 * nfw_mass_function(halo.concentration)
            assert m_3d == pytest.approx(mass, rel=1e-12)
            assert mass / (4 / 3 * math.pi * halo.r200**3) == pytest.approx(DELTA_CRIT * g.rho_crit, rel=1e-12)
            assert halo.concentration == pytest.approx(halo.r200 / r_s, rel=1e-14)
            assert halo.kappa_s == pytest.approx(halo.rho_s * r_s / g.sigma_crit, rel=1e-14)


def test_mass_2d_is_the_integral_of_kappa():
    """M_2D(<R) - M_2D(<r_0) = 2 pi Sigma_cr int_r0^R kappa(r) r dr by quadrature, from r_0 = X_MIN r_s
    (inside r_0 the cusp of kappa is clamped, which would cost pi kappa_s r_s^2 X_MIN^2 of mass)."""
    g = lens_geometry()
    for mass, r_s, _, _ in random_hosts(seed=5, n=4):
        profile = NFW.from_halo(HaloParameters(mass, r_s, g))
        inner = X_MIN * r_s
        for radius in (0.01 * r_s, 0.7 * r_s, r_s, 3.0 * r_s, 20.0 * r_s):
            integral, _ = quad(lambda r, p=profile: 2 * math.pi * r * float(p.convergence(r, 0.0)), inner, radius,
                               epsabs=0.0, epsrel=1e-13, limit=200, points=[r for r in (1e-3 * r_s, r_s) if r < radius])
            expected = float(profile.mass_2d(radius, g.sigma_crit) - profile.mass_2d(inner, g.sigma_crit))
            assert integral * g.sigma_crit == pytest.approx(expected, rel=1e-11)


# Summing pixels whose centres lie inside a circle (or ellipse) of radius R = 430 pixels: the lattice-
# point count differs from the area by O((R / pixel)^(2/3)) pixels (Gauss circle problem), ~3e-4 of
# the mass at worst, far less on average; the cusp's pixel sampling error is ~1e-7. Tolerance 2e-4.
PIXEL_SUM_TOLERANCE = 2e-4


def test_pixel_sum_of_kappa_gives_the_projected_mass():
    g = lens_geometry()
    grid_size, fov = 2048, 1000.0
    x, y = pixel_grid(grid_size, fov)
    radius_grid = np.hypot(x, y)
    pixel_area = (fov / grid_size) ** 2
    for mass, r_s, _, _ in random_hosts(seed=9, n=3):
        profile = NFW.from_halo(HaloParameters(mass, r_s, g))
        kappa = profile.convergence_map(grid_size, fov)
        for radius in (100.0, 420.0):
            enclosed = kappa[radius_grid < radius].sum() * pixel_area * g.sigma_crit
            assert enclosed == pytest.approx(float(profile.mass_2d(radius, g.sigma_crit)), rel=PIXEL_SUM_TOLERANCE)


def test_elliptical_maps_keep_the_mass_inside_isodensity_contours():
    """The ellipse xi < R has area pi R^2 (semi-axes R / sqrt q, R sqrt q), so it holds M_2D(<R) of the NFW."""
    g = lens_geometry()
    grid_size, fov = 2048, 1000.0
    x, y = pixel_grid(grid_size, fov)
    pixel_area = (fov / grid_size) ** 2
    for mass, r_s, e, phi in random_hosts(seed=13, n=3):
        halo = HaloParameters(mass, r_s, g)
        profile = EllipticalNFW.from_halo(halo, e, phi)
        radius = 0.95 * 0.5 * fov * math.sqrt(profile.q)  # the whole ellipse fits on the map
        enclosed = profile.convergence_map(grid_size, fov)[profile.elliptical_radius(x, y) < radius].sum()
        expected = float(NFW.from_halo(halo).mass_2d(radius, g.sigma_crit))
        assert enclosed * pixel_area * g.sigma_crit == pytest.approx(expected, rel=PIXEL_SUM_TOLERANCE)


# --- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid_size", [64, 33])
def test_rotating_the_position_angle_rotates_the_map(grid_size):
    """phi + 90 deg rotates the halo counter-clockwise. With map[i][j] at (X = x_j, Y = y_i) (meshgrid 'xy'),
    the rotated map is new[i][j] = old[N-1-j][i], i.e. np.rot90(old, k=-1).

    A centred ellipse is symmetric under a half turn, so rot90 by +90 and -90 deg would agree; an
    off-centre clump, rotated with it to (-y0, x0), makes the map asymmetric and the direction testable.
    """
    g = lens_geometry()
    x, y = pixel_grid(grid_size)
    for mass, r_s, e, phi in random_hosts(seed=17, n=4):
        halo = HaloParameters(mass, r_s, g)
        clump = dict(kappa_s=2.0 * halo.kappa_s, r_s=20.0, tau=5.0)
        old = EllipticalNFW.from_halo(halo, e, phi).convergence_map(grid_size)
        old = old + TruncatedNFW(**clump, center_x=150.0, center_y=60.0).convergence(x, y)
        new = EllipticalNFW.from_halo(halo, e, phi + 90.0 - 360.0 * (phi > 0)).convergence_map(grid_size)
        new = new + TruncatedNFW(**clump, center_x=-60.0, center_y=150.0).convergence(x, y)
        np.testing.assert_allclose(new, np.rot90(old, k=-1), rtol=1e-12)
        assert not np.allclose(new, np.rot90(old, k=1), rtol=1e-3)


def test_position_angle_points_the_major_axis_counter_clockwise_from_x():
    """kappa on a circle peaks along the major axis, at angle phi (mod 180) from +x."""
    profile = EllipticalNFW(kappa_s=0.3, r_s=150.0, ellipticity=0.3, position_angle_deg=35.0)
    angle = np.radians(np.arange(0.0, 360.0, 0.5))
    kappa = profile.convergence(100.0 * np.cos(angle), 100.0 * np.sin(angle))
    assert np.degrees(angle[np.argmax(kappa)]) % 180.0 == pytest.approx(35.0)


def test_maps_follow_the_pixel_grid_convention():
    """map[i][j] is kappa at (X[i][j], Y[i][j]) = ((j - (N-1)/2) fov/N, (i - (N-1)/2) fov/N)."""
    result = generate_map(MapRequest("Elliptical NFW", 5e12, 120.0, 0.4, 20.0, grid_size=32, fov_kpc=600.0))
    j, i = np.meshgrid(np.arange(32), np.arange(32))
    np.testing.assert_array_equal(result.x_kpc, (j - 15.5) * 600.0 / 32)
    np.testing.assert_array_equal(result.y_kpc, (i - 15.5) * 600.0 / 32)
    profile = EllipticalNFW.from_halo(result.halo, 0.4, 20.0)
    np.testing.assert_array_equal(result.convergence, profile.convergence(result.x_kpc, result.y_kpc))


@pytest.mark.parametrize("grid_size", [1, 2, 9, 64, 65, 200])
def test_symmetric_grid_rendering_equals_pointwise_evaluation(grid_size):
    """convergence_map evaluates half (or a quarter) of the grid and mirrors it: the same bits as convergence."""
    halo = HaloParameters(3e12, 90.0, lens_geometry())
    x, y = pixel_grid(grid_size, 700.0)
    for profile in (NFW.from_halo(halo), EllipticalNFW.from_halo(halo, 0.35, -63.0),
                    CoredNFW.from_halo(halo, 0.25), CoredNFW.from_halo(halo, 0.4, 0.2, 100.0)):
        np.testing.assert_array_equal(profile.convergence_map(grid_size, 700.0), profile.convergence(x, y))


@pytest.mark.parametrize("grid_size", [9, 64, 65])
def test_off_centre_profiles_are_the_centred_ones_shifted(grid_size):
    """An off-centre host falls back from the mirrored fast path to every pixel, and equals the centred
    profile evaluated at offsets from its centre; an integer-pixel shift moves the map by whole pixels."""
    halo = HaloParameters(3e12, 90.0, lens_geometry())
    x, y = pixel_grid(grid_size, 700.0)
    step = 700.0 / grid_size
    for centred, shifted in (
        (NFW.from_halo(halo), NFW.from_halo(halo, 3 * step, -2 * step)),
        (EllipticalNFW.from_halo(halo, 0.35, -63.0), EllipticalNFW.from_halo(halo, 0.35, -63.0, 3 * step, -2 * step)),
        (CoredNFW.from_halo(halo, 0.4, 0.2, 100.0), CoredNFW.from_halo(halo, 0.4, 0.2, 100.0, 3 * step, -2 * step)),
    ):
        np.testing.assert_array_equal(shifted.convergence_map(grid_size, 700.0), shifted.convergence(x, y))
        np.testing.assert_allclose(shifted.convergence(x, y), centred.convergence(x - 3 * step, y + 2 * step),
                                   rtol=1e-13)
        moved, original = shifted.convergence_map(grid_size, 700.0), centred.convergence_map(grid_size, 700.0)
        np.testing.assert_allclose(moved[: grid_size - 2, 3:], original[2:, : grid_size - 3], rtol=1e-12)


def test_kappa_scales_with_inverse_sigma_crit_when_the_source_moves():
    mass, r_s, e, phi = random_hosts(seed=19, n=1)[0]
    base = generate_map(MapRequest("Elliptical NFW", mass, r_s, e, phi, grid_size=64, z_source=2.0))
    for z_source in (0.7, 1.2, 3.5):
        other = generate_map(MapRequest("Elliptical NFW", mass, r_s, e, phi, grid_size=64, z_source=z_source))
        ratio = other.convergence / base.convergence
        expected = lens_geometry(0.5, 2.0).sigma_crit / lens_geometry(0.5, z_source).sigma_crit
        np.testing.assert_allclose(ratio, expected, rtol=1e-13)
        assert abs(expected - 1.0) > 0.05  # the test is sensitive to the source redshift


# --- numerical robustness -----------------------------------------------------------------------------


def test_f_is_exact_and_continuous_at_x_equal_one():
    """F(1) = 1/3 and F'(1) = -2/5 (from F = sum_k (-w)^k / (2k + 3), w = x^2 - 1)."""
    assert float(nfw_projected(np.array(1.0))) == pytest.approx(1.0 / 3.0, rel=1e-15)
    for delta in (1e-6, 1e-9, 1e-3):
        below, above = nfw_projected(np.array([1.0 - delta, 1.0 + delta]))
        assert abs(below - 1.0 / 3.0) < 0.41 * delta and abs(above - 1.0 / 3.0) < 0.41 * delta
        assert (above - below) / (2 * delta) == pytest.approx(-0.4, abs=max(1e-6, 2 * delta))


def test_f_is_smooth_across_its_series_switch():
    """A fine scan around x = 1 has no jump: second differences stay at rounding level."""
    x = np.linspace(0.8, 1.2, 40001)
    f = nfw_projected(x)
    second = np.diff(f, 2)
    assert np.all(np.abs(second - np.median(second)) < 1e-10)


def test_f_limits_at_small_and_large_radius():
    """F -> ln(2/x) - 1 as x -> 0 (error O(x^2 ln x)) and x^2 F = 1 - pi / (2x) + 2 / x^2 + O(1/x^3) as x -> infinity
    (expanding arccos(1/x) = pi/2 - 1/x + O(1/x^3) in F = (1 - arccos(1/x) / sqrt(x^2 - 1)) / (x^2 - 1))."""
    small = np.array([1e-5, 1e-4])
    np.testing.assert_allclose(nfw_projected(small), np.log(2 / small) - 1, rtol=1e-7)
    for large in (1e2, 1e3, 1e4, 1e6):
        expected = 1 - np.pi / (2 * large) + 2 / large**2
        assert large**2 * float(nfw_projected(np.array(large))) == pytest.approx(expected, rel=max(3 / large**3, 1e-14))
    # Below X_MIN the cusp is clamped: finite and constant.
    tiny = nfw_projected(np.array([0.0, 1e-12, X_MIN]))
    assert np.all(np.isfinite(tiny)) and np.ptp(tiny) == 0.0


def test_profiles_are_finite_everywhere():
    radii = np.concatenate([[0.0, 1e-300, 1e-12, X_MIN], np.logspace(-8, 8, 2001), 1 + np.linspace(-1e-6, 1e-6, 41)])
    for values in (
        nfw_projected(radii),
        nfw_enclosed(radii),
        cored_nfw_projected(radii, 0.1),
        cored_nfw_projected(radii, 0.5),
        truncated_nfw_projected(radii, 0.5),
        truncated_nfw_projected(radii, 30.0),
    ):
        assert np.all(np.isfinite(values))
    assert np.all(nfw_projected(radii) > 0) and np.all(np.diff(nfw_projected(np.sort(radii))) <= 0)
    assert np.all(np.diff(nfw_enclosed(np.sort(radii))) >= 0)


def test_maps_are_finite_across_the_box():
    """Box corners, odd grids (a pixel centre at R = 0) and every scenario give finite, positive maps."""
    for mass in MASS_RANGE:
        for r_s in SCALE_RADIUS_RANGE:
            for e in (0.0, 0.5):
                for grid_size, scenario in ((33, None), (64, "CDM"), (32, "SIDM"), (129, "WDM")):
                    profile = "NFW" if e == 0 else "Elliptical NFW"
                    request = MapRequest(profile, mass, r_s, e, 10.0, grid_size, scenario=scenario, seed=1)
                    kappa = generate_map(request).convergence
                    assert np.all(np.isfinite(kappa)) and np.all(kappa > 0)


# --- numpy and torch agree -------------------------------------------------------------------------


def host_tensors(hosts, dtype):
    g = lens_geometry()
    as_t = lambda a: torch.as_tensor(np.asarray(a, np.float64), dtype=dtype)  # noqa: E731
    return (
        as_t(kappa_s_of(hosts.M_vir, hosts.scale_radius, g)),
        as_t(hosts.scale_radius / 1000.0),
        as_t(hosts.ellipticity),
        as_t(np.radians(hosts.position_angle)),
    )


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("grid_size", [64, 31])
def test_render_hosts_matches_numpy_profiles(dtype, rtol, grid_size):
    hosts = sample_hosts(24, rng=23)
    core = np.where(np.arange(24) % 3 == 0, np.random.default_rng(1).uniform(0.1, 0.5, 24), 0.0)
    kappa_s, r_s, e, phi = host_tensors(hosts, dtype)
    maps = render_hosts(kappa_s, r_s, e, phi, grid_size, core_fraction=torch.as_tensor(core, dtype=dtype))
    maps = maps.double().numpy()
    x, y = pixel_grid(grid_size, 1000.0)
    for k in range(len(hosts)):
        ks, rs = float(kappa_s_of(hosts.M_vir[k], hosts.scale_radius[k], lens_geometry())), hosts.scale_radius[k]
        if core[k] > 0:
            profile = CoredNFW(ks, rs, core[k], hosts.ellipticity[k], hosts.position_angle[k])
        else:
            profile = EllipticalNFW(ks, rs, hosts.ellipticity[k], hosts.position_angle[k])
        np.testing.assert_allclose(maps[k], profile.convergence(x, y), rtol=rtol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_add_subhalos_matches_numpy_truncated_nfw(dtype, rtol):
    rng = np.random.default_rng(29)
    n = 12
    sub = {"x": rng.uniform(-400, 400, n), "y": rng.uniform(-400, 400, n), "kappa_s": rng.uniform(0.05, 2.0, n),
           "r_s": rng.uniform(1.0, 40.0, n), "tau": rng.uniform(0.5, 20.0, n)}
    index = rng.integers(0, 3, n)
    as_t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    maps = add_subhalos(torch.zeros(3, 48, 48, dtype=dtype), torch.as_tensor(index), as_t(sub["x"] / 1000),
                        as_t(sub["y"] / 1000), as_t(sub["kappa_s"]), as_t(sub["r_s"] / 1000), as_t(sub["tau"]))
    x, y = pixel_grid(48, 1000.0)
    expected = np.zeros((3, 48, 48))
    for k in range(n):
        clump = TruncatedNFW(sub["kappa_s"][k], sub["r_s"][k], sub["tau"][k], sub["x"][k], sub["y"][k])
        expected[index[k]] += clump.convergence(x, y)
    # float32: relative to each map's peak, since a truncated NFW's far tail is a cancellation of O(1) terms.
    np.testing.assert_allclose(maps.double().numpy(), expected, rtol=rtol, atol=rtol * expected.max() * 1e-3)


def batch_of(requests: list[MapRequest]) -> HostBatch:
    return HostBatch(
        M_vir=np.array([r.M_vir for r in requests]),
        scale_radius=np.array([r.scale_radius for r in requests]),
        ellipticity=np.array([r.ellipticity for r in requests]),
        position_angle=np.array([r.position_angle for r in requests]),
        scenario=np.array([NO_SCENARIO if r.scenario is None else SCENARIOS.index(r.scenario) for r in requests]),
        seed=np.array([r.seed for r in requests]),
        center_x_kpc=np.array([r.center_x_kpc for r in requests]),
        center_y_kpc=np.array([r.center_y_kpc for r in requests]),
    )


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 5e-5)])
def test_generate_batch_matches_generate_map(dtype, rtol):
    """Smooth, elliptical and every scenario: map k of a batch equals generate_map with the same seed."""
    requests = []
    for k, (mass, r_s, e, phi) in enumerate(random_hosts(seed=37, n=10)):
        scenario = (None, None, "CDM", "WDM", "SIDM")[k % 5]
        profile, e = ("NFW", 0.0) if k % 5 == 0 else ("Elliptical NFW", e)
        requests.append(MapRequest(profile, mass, r_s, e, phi, grid_size=48, scenario=scenario, seed=1000 + k))
    maps = generate_batch(batch_of(requests), grid_size=48, dtype=dtype).double().numpy()
    assert sum(len(generate_map(r).scenario.subhalos) for r in requests if r.scenario) > 0
    for k, request in enumerate(requests):
        np.testing.assert_allclose(maps[k], generate_map(request).convergence, rtol=rtol)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 5e-5)])
def test_generate_batch_matches_generate_map_off_centre(dtype, rtol):
    """Off-centre hosts and their scenario draws (which follow the host's centre) in a batch with centred ones."""
    rng = np.random.default_rng(41)
    requests = []
    for k, (mass, r_s, e, phi) in enumerate(random_hosts(seed=43, n=8)):
        scenario = (None, "CDM", "WDM", "SIDM")[k % 4]
        centre = (0.0, 0.0) if k == 0 else tuple(rng.uniform(-100.0, 100.0, 2))
        requests.append(MapRequest("Elliptical NFW", mass, r_s, e, phi, grid_size=48, scenario=scenario,
                                   seed=2000 + k, center_x_kpc=centre[0], center_y_kpc=centre[1]))
    maps = generate_batch(batch_of(requests), grid_size=48, dtype=dtype).double().numpy()
    for k, request in enumerate(requests):
        smap = generate_map(request)
        np.testing.assert_allclose(maps[k], smap.convergence, rtol=rtol)
        if smap.scenario is not None and len(smap.scenario.subhalos):  # the same draw, moved with the host
            centred = generate_map(MapRequest(**{**request.__dict__, "center_x_kpc": 0.0, "center_y_kpc": 0.0}))
            np.testing.assert_allclose(smap.scenario.subhalos.x - centred.scenario.subhalos.x, request.center_x_kpc)
            np.testing.assert_allclose(smap.scenario.subhalos.y - centred.scenario.subhalos.y, request.center_y_kpc)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_gradients_are_finite_at_x_one_and_near_zero(dtype):
    radii = [0.0, 1e-9, X_MIN, 1e-3, 0.5, 1 - 1e-7, 1.0, 1 + 1e-7, 1.2, 3.0, 1e4]
    x = torch.tensor(radii, dtype=dtype, requires_grad=True)
    cored, truncated = (lambda r: cored_nfw_projected(r, 0.3)), (lambda r: truncated_nfw_projected(r, 2.0))
    for func in (nfw_projected, nfw_enclosed, cored, truncated):
        (grad,) = torch.autograd.grad(func(x).sum(), x)
        assert torch.all(torch.isfinite(grad))
    # Through the batched renderer, with respect to every host parameter (odd grid: a pixel at R = 0).
    values = ([0.3, 0.1], [0.2, 0.1], [0.0, 0.3], [0.0, 1.0])  # kappa_s, r_s / fov, e, phi for two hosts
    params = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in values]
    maps = render_hosts(*params, grid_size=21, core_fraction=torch.tensor([0.0, 0.3], dtype=dtype))
    grads = torch.autograd.grad(maps.sum(), params)
    assert all(torch.all(torch.isfinite(g)) for g in grads)


def test_torch_gradients_match_finite_differences_across_the_series_switch():
    values = [0.2, 0.93, 0.95, 0.9999, 1.0, 1.0001, 1.05, 1.2, 4.0]  # around the series switch |x^2 - 1| = 0.1
    radii = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(nfw_projected, (radii,))
    assert torch.autograd.gradcheck(lambda r: cored_nfw_projected(r, 0.25), (radii,))
    assert torch.autograd.gradcheck(lambda r: truncated_nfw_projected(r, 3.0), (radii,))


@pytest.mark.parametrize("as_array", [np.asarray, lambda a: torch.as_tensor(a, dtype=torch.float64)])
def test_mass_from_lensing_inverts_halo_parameters(as_array):
    for z_lens, z_source in [(0.5, 2.0), (0.3, 1.1)]:
        g = lens_geometry(z_lens, z_source)
        hosts = random_hosts(seed=41, n=32)
        mass = np.array([h[0] for h in hosts])
        r_s = np.array([h[1] for h in hosts])
        kappa_s = np.array([HaloParameters(m, r, g).kappa_s for m, r in zip(mass, r_s)])
        recovered_mass, concentration = mass_from_lensing(as_array(kappa_s), as_array(r_s), g)
        np.testing.assert_allclose(np.asarray(recovered_mass), mass, rtol=1e-10)
        expected_c = [HaloParameters(m, r, g).concentration for m, r in zip(mass, r_s)]
        np.testing.assert_allclose(np.asarray(concentration), expected_c, rtol=1e-10)
