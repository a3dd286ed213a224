"""Dimensionless projected-profile functions shared by the numpy and torch code paths.

Every function takes arrays of one namespace (numpy arrays or torch tensors) and evaluates the same
formula with that namespace, so the float64 numpy profiles and the batched, differentiable torch
renderer cannot drift apart. Radii are in units of the scale radius, x = R / r_s.

All projections reduce to one integral,
    J(X, a) = int_0^inf dt / (X cosh t + a) = 2 g(u) / (X + a),   u = (X - a) / (X + a),
with g(u) = arctan(sqrt u) / sqrt u for u > 0 and artanh(sqrt -u) / sqrt -u for u < 0 (g(0) = 1).
A Taylor series near u = 0 keeps every function smooth and exact at X = a (e.g. x = 1 for the NFW,
where F(1) = 1/3), and the branches are masked so that torch gradients stay finite.
References: Bartelmann (1996), Wright & Brainerd (2000) for the NFW; Baltz, Marshall & Oguri (2009)
for the truncated NFW; the cored NFW rho ~ 1/((x + b)(1 + x)^2) is projected by partial fractions.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

X_MIN = 1e-6  # radii below this (in r_s) are clamped: the NFW cusp is finite on any pixel centre
_SERIES_RADIUS = 0.05  # |u| below which g and g' use their Taylor series


def namespace(x) -> ModuleType:
    """Return `torch` for tensors and `numpy` otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _finfo_eps(x, xp: ModuleType) -> float:
    if xp is np:
        return float(np.finfo(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64).eps)
    return float(xp.finfo(x.dtype).eps)


def _g_and_derivative(u, xp: ModuleType):
    """g(u) and g'(u) for u in (-1, 1), smooth through u = 0."""
    small = xp.abs(u) < _SERIES_RADIUS
    one = xp.ones_like(u)
    u_safe = xp.where(small, 0.5 * one, u)  # keeps the unused branch finite (and its gradient)
    s = xp.sqrt(xp.abs(u_safe))
    eps = _finfo_eps(u, xp)
    g_pos = xp.atan(s) / s
    g_neg = xp.atanh(xp.clip(s, 0.0, 1.0 - eps)) / s
    g_direct = xp.where(u_safe > 0, g_pos, g_neg)
    dg_direct = (1.0 / (1.0 + u_safe) - g_direct) / (2.0 * u_safe)
    # Taylor series of arctan(sqrt u)/sqrt u = sum (-u)^k / (2k + 1) and of its derivative.
    g_series = 1 - u / 3 + u**2 / 5 - u**3 / 7 + u**4 / 9 - u**5 / 11 + u**6 / 13
    dg_series = -1 / 3 + 2 * u / 5 - 3 * u**2 / 7 + 4 * u**3 / 9 - 5 * u**4 / 11 + 6 * u**5 / 13
    return xp.where(small, g_series, g_direct), xp.where(small, dg_series, dg_direct)


def j_integral(X, a):
    """J(X, a) = int_0^inf dt / (X cosh t + a), and its derivative with respect to a."""
    xp = namespace(X)
    s = X + a
    u = (X - a) / s
    g, dg = _g_and_derivative(u, xp)
    value = 2 * g / s
    d_da = -2 * g / s**2 - 4 * X * dg / s**3
    return value, d_da


def clamp_radius(x):
    """Clamp dimensionless radii to X_MIN so that the cusp evaluates to a large finite number."""
    xp = namespace(x)
    return xp.clip(x, X_MIN, None) if xp is np else x.clamp(min=X_MIN)


def nfw_projected(x):
    """Projected NFW shape F(x): kappa(R) = 2 kappa_s F(R / r_s); F(1) = 1/3, F ~ 1/x^2 at large x."""
    x = clamp_radius(x)
    _, dj_da = j_integral(x, 1.0)
    return -dj_da


def nfw_enclosed(x):
    """h(x) = ln(x/2) + J(x, 1): M_2D(<R) = 4 pi rho_s r_s^3 h(R / r_s)."""
    xp = namespace(x)
    x = clamp_radius(x)
    j, _ = j_integral(x, 1.0)
    return xp.log(x / 2) + j


def cored_nfw_projected(x, b):
    """Projected shape of rho = rho_s / ((x + b)(1 + x)^2), core b = r_c / r_s in (0, 1).

    kappa(R) = 2 kappa_s F_b(R / r_s); F_b tends to the NFW F as b -> 0 and is finite at x = 0.
    """
    x = clamp_radius(x)
    j1, dj1 = j_integral(x, 1.0)
    jb, _ = j_integral(x, b)
    a_coef = 1.0 / (1.0 - b) ** 2
    c_coef = -1.0 / (1.0 - b)
    return a_coef * (j1 - b * jb) + c_coef * (j1 + dj1)


def truncated_nfw_projected(x, tau):
    """Projected shape of the truncated NFW rho = rho_s tau^2 / (x (1+x)^2 (x^2 + tau^2)) (BMO 2009).

    kappa(R) = 2 kappa_s F_tau(R / r_s); tends to the NFW F as tau -> infinity.
    """
    xp = namespace(x)
    x = clamp_radius(x)
    t2 = tau**2
    alpha = 1.0 / t2
    gamma = -1.0 / (t2 + 1.0)
    delta = (t2 - 1.0) / (t2 * (1.0 + t2) ** 2)
    epsilon = -2.0 / (1.0 + t2) ** 2
    beta = -alpha - delta
    j1, dj1 = j_integral(x, 1.0)
    s = xp.sqrt(x**2 + t2)
    log_term = (tau / s) * xp.log((s + tau) / x)
    shape = -beta * j1 - delta * log_term + gamma * (j1 + dj1) + epsilon * math.pi / (2 * s)
    return t2 * shape


def truncated_nfw_total_mass_factor(tau):
    """M_total / (4 pi rho_s r_s^3) of the truncated NFW (BMO 2009, eq. 10)."""
    xp = namespace(tau)
    t2 = tau**2
    return t2 / (t2 + 1) ** 2 * ((t2 - 1) * xp.log(tau) + tau * math.pi - (t2 + 1))


def nfw_mass_function(c):
    """m(c) = ln(1 + c) - c / (1 + c): NFW mass inside c r_s over 4 pi rho_s r_s^3."""
    xp = namespace(c)
    return xp.log1p(c) - c / (1 + c)
