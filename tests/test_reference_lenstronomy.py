"""Convergence and deflection against lenstronomy, and profile shapes against line-of-sight integrals.

lenstronomy (a test-only dependency) is the reference of docs/design.md section 3. Its constants (G, c,
rho_crit) differ from astropy's, so its maps differ from ours by one constant factor of about 3e-4;
the shape, i.e. the ratio of the two maps across all pixels, must agree to ~1e-9.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.cosmology import FlatLambdaCDM
from scipy.integrate import quad

from lensing import NFW, CoredNFW, EllipticalNFW, HaloParameters, TruncatedNFW, lens_geometry
from lensing.grid import pixel_grid
from lensing.limits import MASS, SCALE_RADIUS

MASS_RANGE, SCALE_RADIUS_RANGE = MASS.endpoints, SCALE_RADIUS.endpoints

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.Cosmo.lens_cosmo import LensCosmo  # noqa: E402
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402

CONSTANTS_TOLERANCE = 3e-4  # astropy vs lenstronomy G, c and rho_crit (docs/design.md section 3)
# lenstronomy rounds rho_crit to 2.77536627e11 h^2 Msun/Mpc^3, so its r_s (from M and c) is off by
# ~3e-10; with |dln kappa / dln R| < 3 the map ratio can vary by ~1e-9 from that alone.
SHAPE_TOLERANCE = 2e-9
# lenstronomy's closed form (1 - arccos(1/x)/sqrt(x^2 - 1)) / (x^2 - 1) cancels near x = 1: its
# relative error is ~2e-17 / (x - 1)^2 (it returns 0.208 instead of 1/3 at x = 1 + 1e-8). Pixels within
# 1e-3 of x = 1 (error up to 2e-11 outside) are left out of the shape comparison.
LENSTRONOMY_BAD_X1 = 1e-3
REDSHIFTS = [(0.5, 2.0), (0.2, 1.0), (1.0, 3.5), (0.3, 0.6)]


def random_hosts(seed: int, n: int) -> list[tuple[float, float, float, float]]:
    """(M_vir, r_s, e, phi_deg) drawn over the whole API box: log-uniform M and r_s, uniform e and phi."""
    rng = np.random.default_rng(seed)
    mass = 10 ** rng.uniform(*np.log10(MASS_RANGE), n)
    r_s = 10 ** rng.uniform(*np.log10(SCALE_RADIUS_RANGE), n)
    e = rng.uniform(0.0, 0.5, n)
    phi = rng.uniform(-180.0, 180.0, n)
    return list(zip(mass, r_s, e, phi))


def lens_cosmo(z_lens: float, z_source: float) -> LensCosmo:
    return LensCosmo(z_lens, z_source, cosmo=FlatLambdaCDM(H0=70, Om0=0.3))


def lenstronomy_nfw_kwargs(halo: HaloParameters) -> dict:
    """lenstronomy NFW keywords for our halo: Rs, alpha_Rs from LensCosmo.nfw_physical2angle(M, c)."""
    g = halo.geometry
    rs_angle, alpha_rs = lens_cosmo(g.z_lens, g.z_source).nfw_physical2angle(halo.M_vir, halo.concentration)
    return {"Rs": rs_angle, "alpha_Rs": alpha_rs, "center_x": 0.0, "center_y": 0.0}


def expected_ratio(halo: HaloParameters) -> float:
    """Our kappa over lenstronomy's, predicted from the two codes' rho_s and Sigma_cr alone."""
    g = halo.geometry
    cosmo = lens_cosmo(g.z_lens, g.z_source)
    rho0_mpc, _, _ = cosmo.nfwParam_physical(halo.M_vir, halo.concentration)  # Msun / Mpc^3
    sigma_crit_mpc = cosmo.sigma_crit  # Msun / Mpc^2
    return (halo.rho_s / (rho0_mpc * 1e-9)) * ((sigma_crit_mpc * 1e-6) / g.sigma_crit)


def check_ratio(ours: np.ndarray, reference: np.ndarray, halo: HaloParameters, keep: np.ndarray) -> None:
    ratio = ours[keep] / reference[keep]
    assert np.all(np.isfinite(ratio))
    assert np.max(np.abs(ratio - 1.0)) < CONSTANTS_TOLERANCE
    assert np.ptp(ratio) < SHAPE_TOLERANCE, f"map ratio not constant: spread {np.ptp(ratio):.3g}"
    assert abs(np.median(ratio) / expected_ratio(halo) - 1.0) < SHAPE_TOLERANCE


def away_from_x1(xi: np.ndarray, r_s: float) -> np.ndarray:
    """Pixels where lenstronomy's formula is accurate: not near x = 1, and not the cusp at R = 0 that
    both codes clamp, at different radii (ours at 1e-6 r_s, lenstronomy at 1e-6 arcsec)."""
    return (np.abs(xi / r_s - 1.0) > LENSTRONOMY_BAD_X1) & (xi > 1e-3 * r_s)


def design_elliptical_radius(x, y, e: float, phi_deg: float) -> np.ndarray:
    """xi written out from docs/design.md section 3, independently of the package."""
    q = (1 - e) / (1 + e)
    phi = math.radians(phi_deg)
    x_rot = x * math.cos(phi) + y * math.sin(phi)
    y_rot = -x * math.sin(phi) + y * math.cos(phi)
    return np.sqrt(q * x_rot**2 + y_rot**2 / q)


def test_sigma_crit_and_angles_follow_their_definitions():
    """Sigma_cr = c^2 D_s / (4 pi G D_l D_ls) and kpc per arcsec = D_l * 1 arcsec, from astropy."""
    import astropy.units as u
    from astropy.constants import G, c

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    for z_lens, z_source in REDSHIFTS:
        g = lens_geometry(z_lens, z_source)
        d_l, d_s = cosmo.angular_diameter_distance(z_lens), cosmo.angular_diameter_distance(z_source)
        d_ls = cosmo.angular_diameter_distance(z_lens, z_source)
        sigma = (c**2 * d_s / (4 * np.pi * G * d_l * d_ls)).to_value(u.Msun / u.kpc**2)
        assert g.sigma_crit == pytest.approx(sigma, rel=1e-12)
        assert g.kpc_per_arcsec == pytest.approx((d_l * np.pi / 180 / 3600).to_value(u.kpc), rel=1e-12)
        assert g.rho_crit == pytest.approx(cosmo.critical_density(z_lens).to_value(u.Msun / u.kpc**3), rel=1e-12)


@pytest.mark.parametrize("z_lens,z_source", REDSHIFTS)
def test_spherical_nfw_matches_lenstronomy(z_lens, z_source):
    g = lens_geometry(z_lens, z_source)
    model = LensModel(["NFW"])
    for k, (mass, r_s, _, _) in enumerate(random_hosts(seed=1 + int(100 * z_lens), n=6)):
        halo = HaloParameters(mass, r_s, g)
        grid_size, fov = (64, 128, 97)[k % 3], (1000.0, 400.0, 2500.0)[k % 3]
        x, y = pixel_grid(grid_size, fov)
        ours = NFW.from_halo(halo).convergence_map(grid_size, fov)
        reference = model.kappa(g.kpc_to_arcsec(x), g.kpc_to_arcsec(y), [lenstronomy_nfw_kwargs(halo)])
        check_ratio(ours, reference, halo, away_from_x1(np.hypot(x, y), r_s))


def test_nfw_shape_matches_lenstronomy_with_identical_scale_radius():
    """With lenstronomy given our r_s itself, only the normalisation may differ: ratio constant to 1e-12.

    Pixels within 3e-2 of x = 1 are left out: lenstronomy's cancellation error there exceeds 2e-14.
    """
    g = lens_geometry()
    model = LensModel(["NFW"])
    x, y = pixel_grid(128, 1200.0)
    for mass, r_s, _, _ in random_hosts(seed=7, n=5):
        halo = HaloParameters(mass, r_s, g)
        kwargs = dict(lenstronomy_nfw_kwargs(halo), Rs=g.kpc_to_arcsec(r_s))
        ratio = NFW.from_halo(halo).convergence(x, y) / model.kappa(g.kpc_to_arcsec(x), g.kpc_to_arcsec(y), [kwargs])
        radius = np.hypot(x, y)
        keep = (np.abs(radius / r_s - 1.0) > 3e-2) & (radius > 1e-3 * r_s)
        assert np.ptp(ratio[keep]) < 1e-12


@pytest.mark.parametrize("z_lens,z_source", REDSHIFTS[:3])
def test_elliptical_nfw_matches_lenstronomy_at_elliptical_radius(z_lens, z_source):
    g = lens_geometry(z_lens, z_source)
    model = LensModel(["NFW"])
    for k, (mass, r_s, e, phi) in enumerate(random_hosts(seed=11 + int(100 * z_lens), n=6)):
        halo = HaloParameters(mass, r_s, g)
        grid_size = (64, 128, 33)[k % 3]
        x, y = pixel_grid(grid_size)
        xi = design_elliptical_radius(x, y, e, phi)
        ours = EllipticalNFW.from_halo(halo, e, phi).convergence_map(grid_size)
        reference = model.kappa(g.kpc_to_arcsec(xi), np.zeros_like(xi), [lenstronomy_nfw_kwargs(halo)])
        check_ratio(ours, reference, halo, away_from_x1(xi, r_s))


def test_elliptical_convention_matches_lenstronomy_nfw_ellipse_cse():
    """Our (e, phi) is lenstronomy's (e1, e2) = e (cos 2 phi, sin 2 phi) with q = (1 - e) / (1 + e):
    NFW_ELLIPSE_CSE (a cored-steep-ellipsoid expansion, accurate to ~1e-4) gives the same map."""
    g = lens_geometry()
    model = LensModel(["NFW_ELLIPSE_CSE"])
    x, y = pixel_grid(48, 900.0)
    for mass, r_s, e, phi in random_hosts(seed=43, n=4):
        halo = HaloParameters(mass, r_s, g)
        e = max(e, 0.15)
        two_phi = 2 * math.radians(phi)
        kwargs = dict(lenstronomy_nfw_kwargs(halo), e1=e * math.cos(two_phi), e2=e * math.sin(two_phi))
        ratio = EllipticalNFW.from_halo(halo, e, phi).convergence_map(48, 900.0) / model.kappa(
            g.kpc_to_arcsec(x), g.kpc_to_arcsec(y), [kwargs]
        )
        assert np.ptp(ratio) < 2e-4
        assert abs(np.median(ratio) / expected_ratio(halo) - 1.0) < 1e-4


@pytest.mark.parametrize("z_lens,z_source", REDSHIFTS[:2])
def test_deflection_matches_lenstronomy(z_lens, z_source):
    """Our reduced deflection (kpc on the lens plane) / kpc_per_arcsec equals lenstronomy's alpha (arcsec)."""
    g = lens_geometry(z_lens, z_source)
    model = LensModel(["NFW"])
    x, y = pixel_grid(64, 1500.0)
    for mass, r_s, _, _ in random_hosts(seed=21, n=5):
        halo = HaloParameters(mass, r_s, g)
        alpha_x, alpha_y = NFW.from_halo(halo).deflection(x, y)
        ref_x, ref_y = model.alpha(g.kpc_to_arcsec(x), g.kpc_to_arcsec(y), [lenstronomy_nfw_kwargs(halo)])
        ours = np.concatenate([g.kpc_to_arcsec(alpha_x).ravel(), g.kpc_to_arcsec(alpha_y).ravel()])
        reference = np.concatenate([ref_x.ravel(), ref_y.ravel()])
        keep = np.abs(reference) > 1e-12 * np.abs(reference).max()  # the axes, where a component is 0
        check_ratio(ours, reference, halo, keep)
        # The deflection points towards the centre: alpha is parallel to (x, y).
        np.testing.assert_allclose(alpha_x * y, alpha_y * x, atol=1e-12 * np.abs(alpha_x * y).max())
        assert np.all(alpha_x * x + alpha_y * y >= 0)


def test_truncated_nfw_matches_lenstronomy_tnfw():
    """lenstronomy's TNFW (BMO 2009, same alpha_Rs normalisation as NFW) with r_trunc = tau * r_s."""
    g = lens_geometry()
    model = LensModel(["TNFW"])
    rng = np.random.default_rng(31)
    x, y = pixel_grid(64, 800.0)
    for mass, r_s, _, _ in random_hosts(seed=31, n=5):
        halo = HaloParameters(mass, r_s, g)
        tau = float(rng.uniform(0.5, 20.0))
        kwargs = lenstronomy_nfw_kwargs(halo)
        kwargs["r_trunc"] = tau * kwargs["Rs"]
        ours = TruncatedNFW(halo.kappa_s, r_s, tau).convergence(x, y)
        reference = model.kappa(g.kpc_to_arcsec(x), g.kpc_to_arcsec(y), [kwargs])
        check_ratio(ours, reference, halo, away_from_x1(np.hypot(x, y), r_s))


# --- profile shapes against a direct line-of-sight integral of the 3-D density -------------------


def line_of_sight(density, x: float) -> float:
    """int_0^inf rho(sqrt(x^2 + z^2)) dz in units of rho_s r_s: kappa = 2 kappa_s times this."""
    integrand = lambda z: density(math.hypot(x, z))  # noqa: E731
    inner, _ = quad(integrand, 0.0, x, epsabs=0.0, epsrel=1e-13, limit=200)
    outer, _ = quad(integrand, x, math.inf, epsabs=0.0, epsrel=1e-13, limit=200)
    return inner + outer


RADII = [1e-3, 0.05, 0.3, 0.7, 0.95, 1 - 1e-6, 1.0, 1 + 1e-6, 1.05, 1.3, 3.0, 20.0]
SHAPE_QUAD_TOLERANCE = 1e-11  # quad is asked for 1e-13; our closed forms are good to ~1e-14


def kappa_over_two_kappa_s(profile, x_over_rs: float) -> float:
    return float(profile.convergence(np.array([x_over_rs * profile.r_s]), np.array([0.0]))[0]) / (2 * profile.kappa_s)


def test_nfw_shape_equals_line_of_sight_integral():
    profile = NFW(kappa_s=0.7, r_s=150.0)
    for x in RADII:
        expected = line_of_sight(lambda r: 1.0 / (r * (1 + r) ** 2), x)
        assert kappa_over_two_kappa_s(profile, x) == pytest.approx(expected, rel=SHAPE_QUAD_TOLERANCE)


@pytest.mark.parametrize("core", [0.1, 0.3, 0.5])
def test_cored_nfw_shape_equals_line_of_sight_integral(core):
    profile = CoredNFW(kappa_s=0.4, r_s=120.0, core_fraction=core)
    for x in RADII:
        expected = line_of_sight(lambda r: 1.0 / ((r + core) * (1 + r) ** 2), x)
        assert kappa_over_two_kappa_s(profile, x) == pytest.approx(expected, rel=SHAPE_QUAD_TOLERANCE)


@pytest.mark.parametrize("tau", [0.5, 2.0, 15.0])
def test_truncated_nfw_shape_equals_line_of_sight_integral(tau):
    profile = TruncatedNFW(kappa_s=1.3, r_s=5.0, tau=tau)
    for x in RADII:
        expected = line_of_sight(lambda r: tau**2 / (r * (1 + r) ** 2 * (r**2 + tau**2)), x)
        # Far outside the truncation (x >> tau) the BMO closed form cancels to ~1e-12 relative at x = 20.
        tolerance = 1e-10 if x > 10 else SHAPE_QUAD_TOLERANCE
        assert kappa_over_two_kappa_s(profile, x) == pytest.approx(expected, rel=tolerance)
