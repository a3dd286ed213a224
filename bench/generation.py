"""Map generation speed: this project against lenstronomy on the same grids (issue 2's benchmark).

Run from the repository root: `python bench/generation.py`. Every timing is the best of N runs
(time.perf_counter), inputs prepared outside the timed call. Rows:

* spherical NFW: our grid renderer (`NFW.convergence_map`, the path `generate_map` uses), our
  arbitrary-coordinate `NFW.convergence(x, y)`, and the whole `generate_map` request, against
  lenstronomy `LensModel(['NFW']).kappa` on the same pixel centres (in arcsec);
* elliptical NFW: `EllipticalNFW.convergence_map` / `.convergence(x, y)` against lenstronomy's
  `NFW_ELLIPSE_CSE` (same e, phi convention), whose maps agree with ours to ~4e-5 after the constant
  3e-4 offset of the two codes' physical constants (checked in the printout);
* batched torch generation (`generate_batch`, float32) of 1,024 maps of 64 x 64, smooth hosts and with
  a scenario (CDM / WDM / SIDM equally often) on every map, with torch's default threads and with one.

The last line is one JSON object with the speedups at 128 px and the batched throughput.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from astropy.cosmology import FlatLambdaCDM
from lenstronomy.Cosmo.lens_cosmo import LensCosmo
from lenstronomy.LensModel.lens_model import LensModel

from lensing import NFW, EllipticalNFW, HaloParameters, MapRequest, generate_map, lens_geometry
from lensing.grid import pixel_grid
from lensing.synthetic import generate_batch, sample_hosts

GRID_SIZES = (64, 128, 512)
FOV_KPC = 1000.0
HOST = dict(M_vir=1e13, scale_radius=200.0, ellipticity=0.3, position_angle=30.0)
BATCH, BATCH_GRID = 1024, 64
HEADLINE_GRID = 128


def best_of(funcs: dict, repeats: int) -> dict[str, float]:
    """Smallest wall time (s) of each function over `repeats` rounds, after one warm-up call each.

    The functions take turns within every round, so ours and lenstronomy's see the same machine load.
    """
    best = {}
    for name, func in funcs.items():
        func()
        best[name] = math.inf
    for _ in range(repeats):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def lenstronomy_kwargs(halo: HaloParameters, ellipticity: float, phi_deg: float) -> tuple[dict, dict]:
    g = halo.geometry
    cosmo = LensCosmo(g.z_lens, g.z_source, cosmo=FlatLambdaCDM(H0=g.H0, Om0=g.Om0))
    rs_angle, alpha_rs = cosmo.nfw_physical2angle(halo.M_vir, halo.concentration)
    spherical = {"Rs": rs_angle, "alpha_Rs": alpha_rs, "center_x": 0.0, "center_y": 0.0}
    phi = math.radians(phi_deg)
    elliptical = dict(spherical, e1=ellipticity * math.cos(2 * phi), e2=ellipticity * math.sin(2 * phi))
    return spherical, elliptical


def time_grids() -> list[dict]:
    geometry = lens_geometry()
    halo = HaloParameters(HOST["M_vir"], HOST["scale_radius"], geometry)
    nfw = NFW.from_halo(halo)
    enfw = EllipticalNFW.from_halo(halo, HOST["ellipticity"], HOST["position_angle"])
    kw_nfw, kw_enfw = lenstronomy_kwargs(halo, HOST["ellipticity"], HOST["position_angle"])
    ref_nfw, ref_enfw = LensModel(["NFW"]), LensModel(["NFW_ELLIPSE_CSE"])
    rows = []
    for n in GRID_SIZES:
        x, y = pixel_grid(n, FOV_KPC)
        xa, ya = geometry.kpc_to_arcsec(x), geometry.kpc_to_arcsec(y)
        request = MapRequest("NFW", HOST["M_vir"], HOST["scale_radius"], grid_size=n, fov_kpc=FOV_KPC)
        row = {"grid": n}
        row |= best_of({
            "nfw_map": lambda: nfw.convergence_map(n, FOV_KPC),
            "nfw_points": lambda: nfw.convergence(x, y),
            "nfw_generate_map": lambda: generate_map(request),
            "nfw_lenstronomy": lambda: ref_nfw.kappa(xa, ya, [kw_nfw]),
        }, repeats={64: 60, 128: 30, 512: 8}[n])
        row |= best_of({
            "enfw_map": lambda: enfw.convergence_map(n, FOV_KPC),
            "enfw_points": lambda: enfw.convergence(x, y),
            "enfw_lenstronomy": lambda: ref_enfw.kappa(xa, ya, [kw_enfw]),
        }, repeats={64: 10, 128: 5, 512: 3}[n])  # NFW_ELLIPSE_CSE takes ~2 us per pixel
        ratio = enfw.convergence_map(n, FOV_KPC) / ref_enfw.kappa(xa, ya, [kw_enfw])
        row["enfw_ratio_spread"] = float(np.ptp(ratio))
        rows.append(row)
    return rows


def time_batches() -> list[dict]:
    """Batched generation with torch's default thread count and with one thread (intra-op threads
    spin on barriers, so on a busy 2-core machine one thread can be the faster setting)."""
    smooth = sample_hosts(BATCH, rng=0)
    with_scenarios = sample_hosts(BATCH, rng=1, scenario_probability=1.0)
    pixels = BATCH * BATCH_GRID**2
    default_threads = torch.get_num_threads()
    results = []
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        t_smooth = best_of({"smooth": lambda: generate_batch(smooth, BATCH_GRID)}, 5)["smooth"]
        t_scen = best_of({"scenarios": lambda: generate_batch(with_scenarios, BATCH_GRID)}, 3)["scenarios"]
        results.append({"threads": threads, "smooth_s": t_smooth, "smooth_mpix": pixels / t_smooth / 1e6,
                        "scen_s": t_scen, "scen_mpix": pixels / t_scen / 1e6})
    torch.set_num_threads(default_threads)
    return results


def print_table(rows: list[dict]) -> None:
    """One line per grid and profile: our times (grid renderer, x/y evaluation, whole request), lenstronomy's."""
    columns = ("grid", "profile", "ours map ms", "ours x,y ms", "generate ms", "lenstronomy ms",
               "map speedup", "x,y speedup")
    widths = [max(len(c), 9) for c in columns]
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        for key, label in (("nfw", "NFW"), ("enfw", "ellip NFW")):
            reference = r[f"{key}_lenstronomy"]
            generate = f"{r[f'{key}_generate_map'] * 1e3:.3f}" if f"{key}_generate_map" in r else ""
            ours_map, ours_points = r[f"{key}_map"], r[f"{key}_points"]
            cells = (str(r["grid"]), label, f"{ours_map * 1e3:.3f}", f"{ours_points * 1e3:.3f}", generate,
                     f"{reference * 1e3:.3f}", f"{reference / ours_map:.1f}x", f"{reference / ours_points:.1f}x")
            print(" | ".join(c.rjust(w) for c, w in zip(cells, widths)))
    spreads = ", ".join(f"{r['grid']} px {r['enfw_ratio_spread']:.1e}" for r in rows)
    print(f"lenstronomy ellip NFW = NFW_ELLIPSE_CSE; spread of our map / its map: {spreads}")


def main() -> None:
    threads = torch.get_num_threads()
    print(f"numpy {np.__version__}, torch {torch.__version__} ({threads} threads); best-of-N wall times")
    rows = time_grids()
    print_table(rows)
    batches = time_batches()
    for b in batches:
        print(f"batched torch float32, {BATCH} maps of {BATCH_GRID}x{BATCH_GRID}, {b['threads']} thread(s): "
              f"smooth hosts {b['smooth_s'] * 1e3:.1f} ms ({b['smooth_mpix']:.1f} Mpix/s); "
              f"with scenarios {b['scen_s'] * 1e3:.1f} ms ({b['scen_mpix']:.1f} Mpix/s)")
    print("JSON: speedups of the grid renderer (generate_map's path) at 128 px; "
          "batched: smooth hosts, the faster thread setting")
    headline = next(r for r in rows if r["grid"] == HEADLINE_GRID)
    print(json.dumps({
        "nfw_speedup_vs_lenstronomy": round(headline["nfw_lenstronomy"] / headline["nfw_map"], 2),
        "enfw_speedup_vs_lenstronomy": round(headline["enfw_lenstronomy"] / headline["enfw_map"], 2),
        "batched_mpix_per_s": round(max(b["smooth_mpix"] for b in batches), 2),
    }))


if __name__ == "__main__":
    main()
