"""The `lensing` command line: `lensing generate` writes synthetic maps as .npy, FITS and/or PNG.

Subcommands are registered in SUBCOMMANDS: each entry is a function `add_parser(subparsers)` that adds
its parser and sets `handler`, a function (argparse.Namespace) -> exit code, with `set_defaults`.
Adding a subcommand means appending its `add_parser` to SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from .arguments import SEED
from .io import save_npy, save_png, write_fits
from .limits import (
    CONCENTRATION,
    DEC,
    ELLIPTICITY,
    GRID_SIZE,
    MASS,
    MAX_CENTER_FRACTION,
    NOISE_SIGMA,
    POSITION_ANGLE,
    SCALE_RADIUS,
    InputError,
)
from .pinn import calibration, evaluate, train
from .profiles import PROFILE_TYPES
from .scenarios import SCENARIOS
from .synthetic import MapRequest, SyntheticMap, generate_map

Subparsers = argparse._SubParsersAction  # argparse's type for the object add_subparsers returns


@dataclass(frozen=True)
class _Option:
    flag: str
    field: str  # the MapRequest field it sets
    type: Callable[[str], object]
    help: str


_OPTIONS = (
    _Option("--profile-type", "profile_type", str, "host profile; a non-zero --ellipticity needs 'Elliptical NFW'"),
    _Option("--mass", "M_vir", float, "host virial mass M_vir = M_200c in Msun (solar masses), "
            f"in {MASS.text()}"),
    _Option("--scale-radius", "scale_radius", float, "host NFW scale radius r_s in physical kpc, "
            f"in {SCALE_RADIUS.text()}; omit it (and --concentration) for the Duffy et al. (2008) relation"),
    _Option("--concentration", "concentration", float, "host concentration c = r_200 / r_s (dimensionless), "
            f"instead of --scale-radius, in {CONCENTRATION.text()}"),
    _Option("--ellipticity", "ellipticity", float, "host ellipticity e = (1 - q) / (1 + q), dimensionless, "
            f"q = minor/major axis ratio, in {ELLIPTICITY.text()}"),
    _Option("--position-angle", "position_angle", float, "host position angle in degrees, "
            f"counter-clockwise from +x, in {POSITION_ANGLE.text()}"),
    _Option("--grid-size", "grid_size", int, "map side in pixels (the API generates 32, 64 or 128), "
            f"in {GRID_SIZE.text()}"),
    _Option("--fov-kpc", "fov_kpc", float, "side of the square field of view in physical kpc at the lens"),
    _Option("--z-lens", "z_lens", float, "lens redshift (dimensionless, > 0)"),
    _Option("--z-source", "z_source", float, "source redshift (dimensionless, > z_lens)"),
    _Option("--scenario", "scenario", str, "dark-matter substructure; omit for a smooth host"),
    _Option("--seed", "seed", SEED, "random seed (non-negative integer) of the scenario "
            "draw and the noise; omit for a fresh draw"),
    _Option("--noise-sigma", "noise_sigma", float, "standard deviation of Gaussian noise added to kappa "
            f"(dimensionless convergence), in {NOISE_SIGMA.text()}"),
    _Option("--center-x-kpc", "center_x_kpc", float, "host centre along x in physical kpc from the map centre, "
            f"at most {MAX_CENTER_FRACTION:g} x the field of view"),
    _Option("--center-y-kpc", "center_y_kpc", float, "host centre along y in physical kpc from the map centre, "
            f"at most {MAX_CENTER_FRACTION:g} x the field of view"),
    _Option("--ra", "ra", float, "right ascension of the host centre in degrees (ICRS), in [0, 360), for the "
            "FITS sky coordinates"),
    _Option("--dec", "dec", float, f"declination of the host centre in degrees (ICRS), in {DEC.text()}"),
)
_FLAG_OF_FIELD = {option.field: option.flag for option in _OPTIONS}
_CHOICES = {"profile_type": PROFILE_TYPES, "scenario": SCENARIOS}


def add_generate_parser(subparsers: Subparsers) -> None:
    """Register `lensing generate`: one option per MapRequest field and the output paths."""
    parser = subparsers.add_parser(
        "generate",
        help="generate a synthetic convergence map",
        description="Generate a synthetic convergence (kappa) map of an NFW halo and write it as .npy, "
        "FITS and/or PNG. Lengths are physical kpc, masses Msun, angles degrees.",
    )
    defaults = {field.name: field.default for field in fields(MapRequest)}
    for option in _OPTIONS:
        default = defaults[option.field]
        parser.add_argument(option.flag, dest=option.field, type=option.type, default=default,
                            choices=_CHOICES.get(option.field), help=option.help + _default_text(default))
    output = parser.add_argument_group("outputs (at least one)")
    output.add_argument("--npy", metavar="PATH", help="write the float64 map as .npy")
    output.add_argument("--fits", metavar="PATH", help="write a FITS image with pixel scale (kpc, arcsec), "
                        "redshifts, cosmology and host parameters in its header")
    output.add_argument("--png", metavar="PATH", help="write a PNG on a log colour scale, axes in kpc")
    parser.set_defaults(handler=run_generate)


def _default_text(default: object) -> str:
    """Help suffix showing a default compactly (1e+12, not 1000000000000.0); none for None."""
    if default is None:
        return ""
    return f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"


def run_generate(args: argparse.Namespace) -> int:
    """Validate the request, generate the map and write the requested files; 2 for bad input, 1 for I/O errors."""
    writers = [(path, write) for path, write in ((args.npy, _write_npy), (args.fits, write_fits),
                                                 (args.png, save_png)) if path]
    if not writers:
        return _fail("give at least one output: --npy, --fits or --png", 2)
    try:
        request = MapRequest(**{option.field: getattr(args, option.field) for option in _OPTIONS})
    except InputError as exc:
        hint = f" (option {_FLAG_OF_FIELD[exc.field]})" if exc.field in _FLAG_OF_FIELD else ""
        return _fail(f"{exc}{hint}", 2)
    smap = generate_map(request)
    for path, write in writers:
        try:
            write(path, smap)
        except OSError as exc:
            return _fail(f"cannot write {path}: {exc.strerror or exc}", 1)
        print(f"wrote {path}")
    return 0


def _write_npy(path: str, smap: SyntheticMap) -> None:
    save_npy(path, smap.convergence)


def _fail(message: str, code: int) -> int:
    print(f"lensing generate: error: {message}", file=sys.stderr)
    return code


# Each entry registers one subcommand; add yours here.
SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    add_generate_parser, train.add_parser, calibration.add_parser, evaluate.add_parser)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="lensing", description="Gravitational lensing by dark-matter halos.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lensing` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
