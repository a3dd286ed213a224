"""Reading and writing convergence maps: .npy, FITS (with the lens geometry in the header) and PNG.

The HTTP API sends and receives maps as bodies (application/x-npy, application/fits, image/png), so
every format has a bytes form; the path forms are thin wrappers. Every reader validates what it
returns (`validate_map`): a finite, numeric, square 2-D float64 array, or an InputError naming the problem.
Pickled data is never loaded (`allow_pickle=False` throughout).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .limits import FOV, InputError
from .synthetic import SyntheticMap

PathLike = str | os.PathLike


# --- validation ----------------------------------------------------------------------------------


def validate_map(array, name: str = "map") -> np.ndarray:
    """Return `array` as a native float64 ndarray, or raise a ValueError naming `name` and the problem.

    A map must be numeric (integer or float, not bool, complex or object), 2-D, square, non-empty
    and finite (no NaN or Inf).
    """
    try:
        values = np.asarray(array)
    except ValueError:
        raise InputError(name, f"{name} is ragged: its rows have different lengths") from None
    if values.dtype.kind not in "iuf":
        raise InputError(name, f"{name} must hold integers or floats, got dtype {values.dtype}")
    if values.ndim != 2:
        raise InputError(name, f"{name} must be 2-D, got {values.ndim}-D with shape {values.shape}")
    if values.shape[0] != values.shape[1]:
        raise InputError(name, f"{name} must be square, got shape {values.shape}")
    if values.size == 0:
        raise InputError(name, f"{name} is empty")
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        raise InputError(name, f"{name} must be finite, found {n_nan} NaN and {n_inf} Inf pixel(s)")
    return values


# --- .npy ----------------------------------------------------------------------------------------


def to_npy_bytes(kappa: np.ndarray) -> bytes:
    """Serialise a map as .npy bytes (float64)."""
    buffer = io.BytesIO()
    np.save(buffer, validate_map(kappa), allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(data: bytes) -> np.ndarray:
    """Parse .npy bytes into a validated float64 map; object arrays and other pickles are refused."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise InputError("body", f"not a valid .npy map: {exc}") from None
    if not isinstance(loaded, np.ndarray):  # an .npz archive
        raise InputError("body", "not a valid .npy map: got an .npz archive, expected a single array")
    return validate_map(loaded)


def save_npy(path: PathLike, kappa: np.ndarray) -> None:
    """Write a map to a .npy file."""
    with open(path, "wb") as handle:
        handle.write(to_npy_bytes(kappa))


def load_npy(path: PathLike) -> np.ndarray:
    """Read a validated float64 map from a .npy file."""
    with open(path, "rb") as handle:
        return from_npy_bytes(handle.read())


# --- FITS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Card:
    keyword: str
    name: str  # key in SyntheticMap.parameters() / geometry_dict() / MapRequest, and in read_fits' dict
    comment: str


# Header cards written for every synthetic map; read_fits returns those present under `name`.
# A value of None (no scenario, no seed, cuspy host) is written as an undefined card and read back as None.
_CARDS = (
    _Card("FOVKPC", "fov_kpc", "[kpc] side of the square field of view"),
    _Card("PIXKPC", "pixel_scale_kpc", "[kpc] pixel side"),
    _Card("PIXASEC", "pixel_scale_arcsec", "[arcsec] pixel side at the lens redshift"),
    _Card("Z_LENS", "z_lens", "lens redshift"),
    _Card("Z_SOURCE", "z_source", "source redshift"),
    _Card("H0", "H0", "[km/s/Mpc] Hubble constant, flat LambdaCDM"),
    _Card("OM0", "Om0", "matter density today, flat LambdaCDM"),
    _Card("SIGCRIT", "sigma_crit_msun_per_kpc2", "[Msun/kpc2] critical surface density"),
    _Card("PROFILE", "profile_type", "host profile"),
    _Card("M_VIR", "M_vir", "[Msun] host M_200c"),
    _Card("R_S", "scale_radius", "[kpc] host NFW scale radius"),
    _Card("RS_SRC", "scale_radius_source", "where r_s comes from"),
    _Card("ELLIP", "ellipticity", "host (1-q)/(1+q), q = minor/major axes"),
    _Card("PA", "position_angle", "[deg] host position angle, CCW from +x"),
    _Card("CENX_KPC", "center_x_kpc", "[kpc] host centre x from the map centre"),
    _Card("CENY_KPC", "center_y_kpc", "[kpc] host centre y from the map centre"),
    _Card("HALO_RA", "ra", "[deg] host centre right ascension (ICRS)"),
    _Card("HALO_DEC", "dec", "[deg] host centre declination (ICRS)"),
    _Card("CONC", "concentration", "host concentration r_200/r_s"),
    _Card("R200", "r200_kpc", "[kpc] host r_200 (200 rho_crit at z_lens)"),
    _Card("RHO_S", "rho_s", "[Msun/kpc3] host NFW characteristic density"),
    _Card("KAPPA_S", "kappa_s", "host rho_s r_s / Sigma_cr"),
    _Card("SCENARIO", "scenario", "CDM, WDM or SIDM; blank: smooth host"),
    _Card("CORE_FR", "core_fraction", "SIDM core radius / r_s; blank: cuspy"),
    _Card("N_SUB", "n_subhalos", "number of subhalos"),
    _Card("SEED", "seed", "seed of scenario and noise; blank: none"),
    _Card("NOISE", "noise_sigma", "sigma of the Gaussian noise added to kappa"),
)
KPC_WCS_KEY = "A"  # the lens-plane WCS in kpc is the alternate WCS 'A'; the primary one is celestial


def fits_header(smap: SyntheticMap) -> fits.Header:
    """Header of a synthetic map: a celestial WCS (primary), a linear kpc WCS (alternate 'A') and the
    geometry and host cards of `_CARDS`.

    Primary WCS: RA---TAN / DEC--TAN (ICRS, degrees), the host centre (request `ra`, `dec`) at its pixel
    position, pixel side = pixel_scale_kpc / D_l(z_lens) radians, north up and east left (CDELT1 < 0,
    so +x on the map points west). DS9, astropy's `WCS(header)` and most viewers read the primary WCS,
    so they show sky coordinates; `WCS(header, key='A')` gives the lens plane in kpc.
    Alternate WCS 'A': FITS pixel p (1-based) along an axis has centre CRVAL + (p - CRPIX) CDELT =
    (p - 1 - (N-1)/2) fov/N kpc, the pixel centres of docs/design.md section 3 (offsets from the map
    centre); axis 1 is x (numpy axis 1), axis 2 is y (numpy axis 0).
    Floats are written in the shortest form that round-trips (exact for every value of the API box);
    FITS limits a value to 20 characters, so the rare longer one keeps 16 significant digits.
    """
    request, n = smap.request, smap.request.grid_size
    pixel_kpc = smap.pixel_scale_kpc
    pixel_deg = smap.geometry.kpc_to_arcsec(pixel_kpc) / 3600.0
    header = fits.Header()
    header["BTYPE"] = ("kappa", "lensing convergence (dimensionless)")
    header["WCSAXES"] = (2, "two image axes")
    header["WCSNAME"] = ("sky", "celestial coordinates of the lens plane")
    header["RADESYS"] = ("ICRS", "celestial reference frame")
    centre_pixel = {1: (n + 1) / 2 + request.center_x_kpc / pixel_kpc,
                    2: (n + 1) / 2 + request.center_y_kpc / pixel_kpc}
    for axis, ctype, value, sign in ((1, "RA---TAN", request.ra, -1.0), (2, "DEC--TAN", request.dec, 1.0)):
        header[f"CTYPE{axis}"] = (ctype, "gnomonic projection")
        header[f"CUNIT{axis}"] = ("deg", "degrees")
        header[f"CRPIX{axis}"] = (centre_pixel[axis], "reference pixel: the host centre")
        header[f"CRVAL{axis}"] = (value, "[deg] sky coordinate of the host centre")
        header[f"CDELT{axis}"] = (sign * pixel_deg, "[deg] pixel side at D_l(z_lens)")
    key = KPC_WCS_KEY
    header[f"WCSAXES{key}"] = (2, "two image axes")
    header[f"WCSNAME{key}"] = ("lens plane kpc", "physical kpc from the map centre")
    for axis, label in ((1, "x"), (2, "y")):
        header[f"CTYPE{axis}{key}"] = (label.upper(), f"lens-plane {label} offset from the map centre")
        header[f"CUNIT{axis}{key}"] = ("kpc", "physical kpc at the lens redshift")
        header[f"CRPIX{axis}{key}"] = ((n + 1) / 2, "reference pixel: the map centre")
        header[f"CRVAL{axis}{key}"] = (0.0, "[kpc] coordinate of the reference pixel")
        header[f"CDELT{axis}{key}"] = (pixel_kpc, "[kpc] pixel side")
    values = {**smap.geometry_dict(), **smap.parameters(), "seed": request.seed, "noise_sigma": request.noise_sigma,
              "profile_type": request.profile_type, "ra": request.ra, "dec": request.dec}
    for card in _CARDS:
        header[card.keyword] = (values[card.name], card.comment)
    return header


def to_fits_bytes(smap: SyntheticMap) -> bytes:
    """Serialise a synthetic map as FITS: a float64 primary image with the header of `fits_header`."""
    hdu = fits.PrimaryHDU(validate_map(smap.convergence), header=fits_header(smap))
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def write_fits(path: PathLike, smap: SyntheticMap) -> None:
    """Write a synthetic map to a FITS file."""
    with open(path, "wb") as handle:
        handle.write(to_fits_bytes(smap))


def fits_cards(header: fits.Header) -> dict:
    """Our cards (`_CARDS`) that a header has, under their names in `SyntheticMap.geometry_dict()` etc."""
    return {card.name: header[card.keyword] for card in _CARDS if card.keyword in header}


def _image_hdu(hdus: fits.HDUList):
    hdu = next((h for h in hdus if h.is_image and h.data is not None), None)
    if hdu is None:
        raise InputError("body", "not a valid FITS map: no HDU holds image data")
    return hdu


def from_fits_bytes(data: bytes) -> tuple[np.ndarray, dict]:
    """Parse FITS bytes: (validated float64 map, header-derived dict); see `read_fits`."""
    try:
        with fits.open(io.BytesIO(data)) as hdus:
            hdu = _image_hdu(hdus)
            image = np.array(hdu.data)
            info = fits_cards(hdu.header)
    except (OSError, TypeError) as exc:  # astropy: OSError for a corrupt file, TypeError for truncated data
        raise InputError("body", f"not a valid FITS map (corrupt or truncated): {exc}") from None
    return validate_map(image, name="FITS image"), info


def read_fits(source: PathLike | bytes) -> tuple[np.ndarray, dict]:
    """Read a map from a FITS file path or FITS bytes: (float64 map, header-derived dict).

    The map is the first HDU with image data. The dict holds, under the names of
    `SyntheticMap.geometry_dict()` / `parameters()` (e.g. fov_kpc, z_lens, M_vir), those of our cards
    that the header has, so a file written elsewhere yields what it carries and nothing invented.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return from_fits_bytes(bytes(source))
    with open(source, "rb") as handle:
        return from_fits_bytes(handle.read())


# --- PNG -----------------------------------------------------------------------------------------

FIGURE_SIZE_INCHES = (6.0, 5.0)
PNG_DPI = 100
LOG_DYNAMIC_RANGE = 1e-4  # colour scale floor relative to the brightest pixel


def map_title(smap: SyntheticMap) -> str:
    """Two-line title: the host (M_vir, r_s, e, scenario if any), then the redshifts and the host centre."""
    request = smap.request
    host = (rf"$M_\mathrm{{vir}}$ = {request.M_vir:.3g} $M_\odot$, "
            rf"$r_s$ = {request.scale_radius:.3g} kpc, $e$ = {request.ellipticity:.2f}")
    if request.scenario:
        host += f", {request.scenario}"
    where = rf"$z_\mathrm{{lens}}$ = {request.z_lens:g}, $z_\mathrm{{source}}$ = {request.z_source:g}"
    if request.center_x_kpc or request.center_y_kpc:
        where += f", centre ({request.center_x_kpc:.4g}, {request.center_y_kpc:.4g}) kpc"
    if request.noise_sigma:
        where += rf", noise $\sigma_\kappa$ = {request.noise_sigma:g}"
    return f"{host}\n{where}"


def map_figure(kappa: np.ndarray, fov_kpc: float, title: str = "") -> Figure:
    """A figure of the map on a log colour scale with a kappa colour bar and x, y axes in kpc.

    A log scale cannot show kappa <= 0 (noise makes such pixels), so the scale runs from a floor to
    the brightest pixel: the faintest positive pixel, but at least LOG_DYNAMIC_RANGE x the brightest
    and at most a tenth of it (so a flat map still renders); pixels below the floor, the non-positive
    ones included, are clipped to it. The figure is a bare `Figure` (no pyplot state).
    """
    kappa = validate_map(kappa)
    FOV.check("fov_kpc", fov_kpc)
    positive = kappa[kappa > 0]
    vmax = float(positive.max()) if positive.size else 1.0
    vmin = float(np.clip(positive.min(), vmax * LOG_DYNAMIC_RANGE, vmax / 10)) if positive.size else vmax / 10
    half = fov_kpc / 2  # pixel edges: the centres sit half a pixel inside
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=PNG_DPI, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.clip(kappa, vmin, None), origin="lower", extent=(-half, half, -half, half),
                        norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", interpolation="nearest")
    axes.set_xlabel("x [kpc]")
    axes.set_ylabel("y [kpc]")
    axes.set_title(title, fontsize=10)
    colour_bar = figure.colorbar(image, ax=axes, label=r"convergence $\kappa$ (dimensionless)")
    colour_bar.set_ticks(_log_ticks(vmin, vmax))
    colour_bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    colour_bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return figure


def _log_ticks(vmin: float, vmax: float) -> list[float]:
    """Colour-bar ticks at 1, 2, 5 x 10^k inside [vmin, vmax] (fewer when the range spans many decades),
    plus the peak itself, so the brightest value can be read off the bar."""
    for mantissas in ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,)):
        ticks = [m * 10.0**k for k in range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
                 for m in mantissas if vmin <= m * 10.0**k <= vmax]
        if len(ticks) <= 9:
            break
    ticks = [t for t in ticks if abs(math.log10(vmax / t)) > 0.08]  # no label crowding the peak's
    return [*ticks, vmax]


def render_png(source: SyntheticMap | np.ndarray, fov_kpc: float | None = None, title: str | None = None) -> bytes:
    """PNG bytes of a synthetic map, or of a bare map array with its `fov_kpc` (required then) and title."""
    if isinstance(source, SyntheticMap):
        kappa = source.convergence
        fov_kpc = source.request.fov_kpc if fov_kpc is None else fov_kpc
        title = map_title(source) if title is None else title
    else:
        kappa = source
        if fov_kpc is None:
            raise InputError("fov_kpc", "fov_kpc is required to render a bare map array")
    buffer = io.BytesIO()
    map_figure(kappa, fov_kpc, title or "").savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def save_png(path: PathLike, source: SyntheticMap | np.ndarray, fov_kpc: float | None = None,
             title: str | None = None) -> None:
    """Write `render_png(source, fov_kpc, title)` to a file."""
    with open(path, "wb") as handle:
        handle.write(render_png(source, fov_kpc, title))
