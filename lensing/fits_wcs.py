"""The geometry of a FITS convergence map (field of view in kpc, redshifts) from its header and the caller.

A map's pixel scale may come from a celestial WCS (RA/DEC axes, CDELT or a CD matrix, CUNIT in any
angle unit), converted to kpc with the angular-diameter distance D_l at the lens redshift; from a linear
WCS in a length unit (our files' alternate WCS 'A', in kpc); or from our FOVKPC / PIXKPC cards. Redshifts
come from Z_LENS / Z_SOURCE cards or the caller. Every source that is present must agree with the others
and with what the caller gave explicitly: a contradiction, a rotated or non-square-pixel WCS, or a CUNIT
that cannot be converted raises an InputError naming the FITS keyword, never a silent guess.

The model's cosmology is fixed (flat LambdaCDM, H0 = 70, Om0 = 0.3), so H0 / OM0 cards that say
otherwise are refused too: their kpc would not be ours.
"""

from __future__ import annotations

import io
import math
import string

import astropy.units as u
from astropy.io import fits

from .cosmology import DEFAULT_H0, DEFAULT_OM0, DEFAULT_Z_LENS, DEFAULT_Z_SOURCE, MapGeometry, lens_geometry
from .grid import DEFAULT_FOV_KPC
from .limits import InputError, as_real

RELATIVE_TOLERANCE = 1e-6  # values written in full precision agree far better; a real contradiction far worse
WCS_KEYS = (" ", *string.ascii_uppercase)  # the primary WCS and the 26 alternates of the FITS standard


def fits_geometry(
    source: fits.Header | bytes,
    fov_kpc: float | None = None,
    z_lens: float | None = None,
    z_source: float | None = None,
) -> MapGeometry:
    """The map geometry of a FITS image: from its header (a `fits.Header`, or FITS bytes whose first image
    HDU is read) and the geometry the caller gave explicitly (None: not given).

    Each quantity is taken from the caller, else the header, else the default (fov 1000 kpc, z_lens 0.5,
    z_source 2.0). Raises InputError(field=<FITS keyword>, message) when the header contradicts the caller
    or itself, when a WCS is rotated (CD/PC off-diagonal terms, CROTA2) or has non-square pixels, or when a
    CUNIT is neither an angle (celestial axes) nor a length (linear axes).
    """
    header = source if isinstance(source, fits.Header) else _image_header(source)
    lens_z = _agreeing("Z_LENS", header, z_lens, "z_lens")
    source_z = _agreeing("Z_SOURCE", header, z_source, "z_source")
    for keyword, ours in (("H0", DEFAULT_H0), ("OM0", DEFAULT_OM0)):
        if keyword in header and not _close(_card_number(header, keyword), ours):
            raise InputError(keyword, f"FITS card {keyword} = {header[keyword]} differs from the model's cosmology "
                                      f"(flat LambdaCDM, H0 = {DEFAULT_H0:g}, Om0 = {DEFAULT_OM0:g})")
    lens_z = DEFAULT_Z_LENS if lens_z is None else lens_z
    source_z = DEFAULT_Z_SOURCE if source_z is None else source_z
    lens = lens_geometry(lens_z, source_z)  # InputError naming z_lens / z_source when out of range
    side = header.get("NAXIS1")
    field_views = _header_fields_of_view(header, side, lens.D_l_kpc)
    if fov_kpc is not None:
        fov = as_real("fov_kpc", fov_kpc)
        for keyword, value in field_views:
            if not _close(value, fov):
                raise InputError(keyword, f"FITS header ({keyword}) gives a field of view of {value:.6g} kpc at "
                                          f"z_lens = {lens_z:g}, the request says fov_kpc = {fov:g}")
    elif field_views:
        fov = field_views[0][1]
        for keyword, value in field_views[1:]:
            if not _close(value, fov):
                raise InputError(keyword, f"FITS header contradicts itself: {keyword} gives a field of view of "
                                          f"{value:.6g} kpc, {field_views[0][0]} gives {fov:.6g} kpc "
                                          f"(at z_lens = {lens_z:g})")
    else:
        fov = DEFAULT_FOV_KPC
    return MapGeometry(fov_kpc=fov, z_lens=lens_z, z_source=source_z)


def _image_header(data: bytes) -> fits.Header:
    """The header of the first HDU with image data in FITS bytes."""
    try:
        with fits.open(io.BytesIO(data)) as hdus:
            hdu = next((h for h in hdus if h.is_image and h.data is not None), None)
            if hdu is None:
                raise InputError("body", "not a valid FITS map: no HDU holds image data")
            return hdu.header.copy()
    except (OSError, TypeError) as exc:
        raise InputError("body", f"not a valid FITS map (corrupt or truncated): {exc}") from None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0)


def _card_number(header: fits.Header, keyword: str) -> float:
    value = header[keyword]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(keyword, f"FITS card {keyword} must be a finite number, got {value!r}")
    return float(value)


def _agreeing(keyword: str, header: fits.Header, given: float | None, name: str) -> float | None:
    """The caller's value, checked against the header card when both exist; else the card's; else None."""
    card = _card_number(header, keyword) if keyword in header and header[keyword] is not None else None
    if given is None:
        return card
    value = as_real(name, given)
    if card is not None and not _close(card, value):
        raise InputError(keyword, f"FITS card {keyword} = {card:g} contradicts the request's {name} = {value:g}")
    return value


def _header_fields_of_view(header: fits.Header, side: object, d_l_kpc: float) -> list[tuple[str, float]]:
    """(keyword, fov in kpc) for every WCS and card of the header that fixes the pixel scale."""
    found: list[tuple[str, float]] = []
    if isinstance(side, bool) or not isinstance(side, int) or side < 1:
        return found
    # Our cards first: when present they are the exact value, the WCS agrees to rounding.
    if "FOVKPC" in header and header["FOVKPC"] is not None:
        found.append(("FOVKPC", _card_number(header, "FOVKPC")))
    if "PIXKPC" in header and header["PIXKPC"] is not None:
        found.append(("PIXKPC", _card_number(header, "PIXKPC") * side))
    for key in WCS_KEYS:
        suffix = key.strip()
        if f"CTYPE1{suffix}" not in header and f"CDELT1{suffix}" not in header and f"CD1_1{suffix}" not in header:
            continue
        pixel = _wcs_pixel_kpc(header, suffix, d_l_kpc)
        if pixel is not None:
            keyword, pixel_kpc = pixel
            found.append((keyword, float(pixel_kpc * side)))
    return found


def _wcs_pixel_kpc(header: fits.Header, suffix: str, d_l_kpc: float) -> tuple[str, float] | None:
    """(keyword, pixel side in kpc) of the WCS with key `suffix` ('' = primary); None if it has no physical scale."""
    ctypes = [str(header.get(f"CTYPE{axis}{suffix}", "")).upper() for axis in (1, 2)]
    celestial = [c.startswith(("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT")) for c in ctypes]
    longitude_first = ctypes[0].startswith(("RA", "GLON", "ELON")) and ctypes[1].startswith(("DEC", "GLAT", "ELAT"))
    if any(celestial) and not longitude_first:
        raise InputError(f"CTYPE1{suffix}", f"FITS WCS axes {ctypes} are not (longitude, latitude): a transposed "
                                            "or partial celestial WCS is not supported")
    scales = _axis_scales(header, suffix)
    if scales is None:
        return None
    (keyword1, scale1), (keyword2, scale2) = scales
    if not _close(abs(scale1), abs(scale2)):
        raise InputError(keyword2, "FITS WCS has non-square pixels "
                         f"({keyword1} = {scale1:g}, {keyword2} = {scale2:g}); "
                                   "resample to square pixels first")
    units = [header.get(f"CUNIT{axis}{suffix}") for axis in (1, 2)]
    in_kpc = []
    for axis, unit_text in zip((1, 2), units):
        keyword = f"CUNIT{axis}{suffix}"
        if unit_text is None or not str(unit_text).strip():
            if not any(celestial):
                return None  # a linear axis without a unit: pixel indices, no physical scale
            unit_text = "deg"  # the FITS standard's default for celestial axes
        try:
            unit = u.Unit(str(unit_text).strip())
        except ValueError:
            raise InputError(keyword, f"FITS card {keyword} = {unit_text!r} is not a unit") from None
        if any(celestial):
            if not unit.is_equivalent(u.rad):
                raise InputError(keyword, f"FITS card {keyword} = {unit_text!r} is not an angle unit")
            in_kpc.append((abs(scale1 if axis == 1 else scale2) * unit).to_value(u.rad) * d_l_kpc)
        else:
            if not unit.is_equivalent(u.kpc):
                raise InputError(keyword, f"FITS card {keyword} = {unit_text!r} is not a length unit")
            in_kpc.append((abs(scale1 if axis == 1 else scale2) * unit).to_value(u.kpc))
    if not _close(in_kpc[0], in_kpc[1]):
        raise InputError(f"CUNIT2{suffix}", f"FITS WCS has non-square pixels: {in_kpc[0]:.6g} and {in_kpc[1]:.6g} kpc")
    return keyword1, in_kpc[0]


def _axis_scales(header: fits.Header, suffix: str) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """((keyword, step) of axis 1, of axis 2) of an unrotated WCS; InputError when it is rotated."""
    cd = {(i, j): f"CD{i}_{j}{suffix}" for i in (1, 2) for j in (1, 2)}
    if any(keyword in header for keyword in cd.values()):
        for off in ((1, 2), (2, 1)):
            if cd[off] in header and _card_number(header, cd[off]) != 0.0:
                raise InputError(cd[off], f"FITS WCS is rotated ({cd[off]} = {header[cd[off]]}); rotate the map to "
                                          "north up (no CD off-diagonal terms) first")
        steps = [(cd[(k, k)], _card_number(header, cd[(k, k)]) if cd[(k, k)] in header else 0.0) for k in (1, 2)]
    else:
        pc = {(i, j): f"PC{i}_{j}{suffix}" for i in (1, 2) for j in (1, 2)}
        for off in ((1, 2), (2, 1)):
            if pc[off] in header and _card_number(header, pc[off]) != 0.0:
                raise InputError(pc[off], f"FITS WCS is rotated ({pc[off]} = {header[pc[off]]}); rotate the map to "
                                          "north up (no PC off-diagonal terms) first")
        if not suffix and "CROTA2" in header and _card_number(header, "CROTA2") % 360.0 != 0.0:
            raise InputError("CROTA2", f"FITS WCS is rotated (CROTA2 = {header['CROTA2']}); rotate the map first")
        steps = []
        for k in (1, 2):
            keyword = f"CDELT{k}{suffix}"
            if keyword not in header:
                return None
            diagonal = _card_number(header, pc[(k, k)]) if pc[(k, k)] in header else 1.0
            steps.append((keyword, _card_number(header, keyword) * diagonal))
    for keyword, step in steps:
        if step == 0.0:
            raise InputError(keyword, f"FITS WCS has a zero pixel step ({keyword})")
    return steps[0], steps[1]
