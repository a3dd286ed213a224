"""Dimensionless projected-profile functions shared by the numpy and torch code paths.

Every function takes arrays of one namespace (numpy arrays or torch tensors) and evaluates the same
formula with that namespace, so the float64 numpy profiles and the batched, differentiable torch
renderer cannot drift apart. Radii are in units of the scale radius, x = R / r_s; the `*_sq`
functions take x^2 directly, which saves a square root on pixel grids (x^2 is a quadratic form).

All projections reduce to one integral,
    J(X, a) = int_0^inf dt / (X cosh t + a) = G(X^2 / a^2 - 1) / a,
    G(w) = arctan(sqrt w) / sqrt w (w > 0),  artanh(sqrt -w) / sqrt -w (w < 0),  G(0) = 1,
so that the NFW functions are F(x) = -dJ/da(x, 1) = (1 - G(w)) / w and h(x) = ln(x / 2) + G(w),
w = x^2 - 1 (Bartelmann 1996; Wright & Brainerd 2000). Near w = 0 the direct form of F cancels, so
there F uses its Taylor series sum_k (-w)^k / (2k + 3) (F(1) = 1/3 exactly) and G = 1 - w F;
artanh(t) = log((1 + t)^2 / x^2) / 2 (as log1p(2t(1 + t) / x^2) / 2 in numpy) stays accurate for x -> 0.
Truncated NFW: Baltz, Marshall & Oguri (2009); the cored NFW rho ~ 1/((x + b)(1 + x)^2) is projected
by partial fractions. numpy evaluates each branch only where it applies; torch evaluates every branch
with safe arguments and blends them with 0/1 weights, so gradients stay finite (and exact) everywhere,
also at x = 1 and x -> 0.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

X_MIN = 1e-6  # radii below this (in r_s) are clamped: the NFW cusp is finite on any pixel centre
_X2_MIN = X_MIN**2
# F = (1 - G)/w loses ~4.5 eps / |w| to cancellation, so |w| < radius uses F's series (terms chosen so
# that its truncation stays below rounding): relative error < 1e-14 in float64 and ~3e-6 in float32.
_F_SERIES = {8: (0.1, 16), 4: (0.15, 9), 2: (0.15, 9)}


def namespace(x) -> ModuleType:
    """Return `torch` for tensors and `numpy` otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _itemsize(x) -> int:
    return x.element_size() if namespace(x) is not np else np.asarray(x).dtype.itemsize


def _alternating_series(w, terms: int, offset: int):
    """sum_{k < terms} (-w)^k / (2k + offset) for 1-d numpy w (as a few array calls) or any torch tensor
    (Horner's rule, one fused op per term)."""
    coefficients = [1.0 / (2 * k + offset) for k in range(terms)]
    if namespace(w) is np:
        powers = np.cumprod(np.broadcast_to(-w[:, None], (w.size, terms - 1)), axis=1)  # (-w)^1 .. (-w)^(n-1)
        return coefficients[0] + (powers * coefficients[1:]).sum(axis=1)  # per-element, no BLAS reordering
    import torch

    acc = torch.tensor(coefficients[-1], dtype=w.dtype, device=w.device)
    for coefficient in reversed(coefficients[:-1]):
        acc = torch.addcmul(torch.tensor(coefficient, dtype=w.dtype, device=w.device), w, acc, value=-1.0)
    return acc


def _clamp_sq(x2):
    """Clamp squared radii at X_MIN^2 (the cusp stays finite); numpy input becomes float64."""
    xp = namespace(x2)
    if xp is np:
        return np.maximum(np.asarray(x2, np.float64), _X2_MIN)
    return x2.clamp(min=_X2_MIN)


def _g_and_f(y2):
    """G(w) and F(w) = (1 - G(w)) / w for w = y2 - 1, y2 = X^2 / a^2 > 0 (see the module docstring).

    Near w = 0 F comes from its series and G = 1 - w F. numpy evaluates the artanh branch and the
    series only where they apply; torch blends every branch with 0/1 weights (no boolean masks, which
    are slow on CPU), keeping all arguments finite so that gradients are finite and exact everywhere.
    """
    xp = namespace(y2)
    w = y2 - 1.0
    abs_w = xp.abs(w)
    radius, terms = _F_SERIES[_itemsize(w)]
    if xp is np:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.sqrt(abs_w)
            g = np.arctan(t, out=np.empty_like(t))  # an array also for 0-d input, so it can be patched
            inner = w < 0
            if inner.any():
                t_in = t[inner]
                g[inner] = 0.5 * np.log1p(2.0 * t_in * (1.0 + t_in) / y2[inner])
            g /= t
            f = np.subtract(1.0, g, out=np.empty_like(g))
            f /= w
        small = abs_w < radius
        if small.any():
            w_small = w[small]
            f[small] = f_small = _alternating_series(w_small, terms, 3)
            g[small] = 1.0 - w_small * f_small
        return g, f
    series_weight = (radius - abs_w).clamp(min=0.0).sign()  # 1 where |w| < radius, else 0
    f_series = _alternating_series(w.clamp(-radius, radius), terms, 3)
    t = xp.sqrt(abs_w + series_weight)  # never 0; the direct branches are unused where it was shifted
    # Outside the series region t > 0.3, so artanh(t) = log((1 + t)^2 / y2) / 2 needs no log1p.
    one_plus_t = 1.0 + t
    artanh = 0.5 * xp.log(one_plus_t * one_plus_t / y2)
    g_direct = xp.lerp(artanh, xp.atan(t), 0.5 + 0.5 * xp.sign(w)) / t
    g = xp.lerp(g_direct, 1.0 - w * f_series, series_weight)
    f = xp.lerp((1.0 - g_direct) / (w + series_weight), f_series, series_weight)
    return g, f


def nfw_projected_sq(x2):
    """Projected NFW shape F as a function of x^2: kappa = 2 kappa_s F; F(1) = 1/3, F ~ 1/x^2 at large x."""
    return _g_and_f(_clamp_sq(x2))[1]


def nfw_projected(x):
    """Projected NFW shape F(x): kappa(R) = 2 kappa_s F(R / r_s); F(1) = 1/3, F ~ 1/x^2 at large x."""
    return nfw_projected_sq(x * x)


def _enclosed_small_x(x2):
    """h for x^2 <= 1/2, where ln(x/2) and G cancel: [(1 - t) ln(2/x) + ln((1 + t)/2)] / t, t = sqrt(1 - x^2),
    with 1 - t = x^2 / (1 + t): no cancellation, h ~ x^2 ln(2/x) / 2 as x -> 0."""
    xp = namespace(x2)
    t = xp.sqrt(1.0 - x2)
    return (x2 / (1.0 + t) * (-0.5 * xp.log(0.25 * x2)) + xp.log1p(-0.5 * x2 / (1.0 + t))) / t


def _enclosed_direct(x2):
    xp = namespace(x2)
    return 0.5 * xp.log(0.25 * x2) + _g_and_f(x2)[0]


def nfw_enclosed(x):
    """h(x) = ln(x/2) + G(x^2 - 1): M_2D(<R) = 4 pi rho_s r_s^3 h(R / r_s); finite and smooth down to x = 0."""
    xp = namespace(x)
    x2 = np.square(np.asarray(x, np.float64)) if xp is np else x * x
    x2 = xp.clip(x2, xp.finfo(x2.dtype).tiny, None)  # h -> 0 smoothly: no X_MIN clamp needed
    if xp is np:
        x2 = np.asarray(x2)
        h = np.empty_like(x2)
        inner = x2 < 0.5
        h[inner] = _enclosed_small_x(x2[inner])
        h[~inner] = _enclosed_direct(x2[~inner])
        return h
    return xp.where(x2 < 0.5, _enclosed_small_x(x2.clamp(max=0.5)), _enclosed_direct(x2.clamp(min=0.5)))


def cored_nfw_projected_sq(x2, b):
    """Projected shape of rho = rho_s / ((x + b)(1 + x)^2), core b = r_c / r_s in (0, 1), against x^2.

    Partial fractions give F_b = [J(x,1) - b J(x,b)] / (1-b)^2 - [J(x,1) - F(x)] / (1-b), and
    kappa(R) = 2 kappa_s F_b(R / r_s); F_b tends to the NFW F as b -> 0 and is finite at x = 0.
    """
    x2 = _clamp_sq(x2)
    g1, f = _g_and_f(x2)
    gb = _g_and_f(x2 / (b * b))[0]  # b J(x, b) = G(x^2 / b^2 - 1)
    return (g1 - gb) / (1.0 - b) ** 2 - (g1 - f) / (1.0 - b)


def cored_nfw_projected(x, b):
    """`cored_nfw_projected_sq` against the radius x."""
    return cored_nfw_projected_sq(x * x, b)


def truncated_nfw_projected_sq(x2, tau):
    """Projected shape of the truncated NFW rho = rho_s tau^2 / (x (1+x)^2 (x^2 + tau^2)) (BMO 2009), against x^2.

    kappa(R) = 2 kappa_s F_tau(R / r_s) with, for s = sqrt(x^2 + tau^2) and L = ln((s + tau) / x),
    F_tau = tau^2 / (tau^2 + 1) F + [2 tau^2 G - (pi tau^2 + (tau^2 - 1) tau L) / s] / (tau^2 + 1)^2,
    BMO's n = 1 convergence; it tends to the NFW F as tau -> infinity.
    """
    xp = namespace(x2)
    x2 = _clamp_sq(x2)
    t2 = tau * tau
    norm = 1.0 / (1.0 + t2) ** 2
    g, f = _g_and_f(x2)
    s = xp.sqrt(x2 + t2)
    log_term = xp.log((s + tau) / xp.sqrt(x2))
    far = ((t2 - 1.0) * tau * norm) * log_term + math.pi * t2 * norm
    return (t2 / (1.0 + t2)) * f + (2.0 * t2 * norm) * g - far / s


def truncated_nfw_projected(x, tau):
    """`truncated_nfw_projected_sq` against the radius x."""
    return truncated_nfw_projected_sq(x * x, tau)


def nfw_mass_function(c):
    """m(c) = ln(1 + c) - c / (1 + c): NFW mass inside c r_s over 4 pi rho_s r_s^3."""
    xp = namespace(c)
    return xp.log1p(c) - c / (1 + c)
