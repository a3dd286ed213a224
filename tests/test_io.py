"""Map I/O: .npy and FITS round trips, FITS header geometry, input validation and PNG rendering."""

from __future__ import annotations

import io
from dataclasses import asdict

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from matplotlib.colors import LogNorm
from matplotlib.image import imread

from lensing import MapRequest, generate_map, lens_geometry
from lensing.cosmology import MapGeometry
from lensing.fits_wcs import fits_geometry
from lensing.io import (
    FIGURE_SIZE_INCHES,
    PNG_DPI,
    from_fits_bytes,
    from_npy_bytes,
    load_npy,
    map_figure,
    read_fits,
    render_png,
    save_npy,
    save_png,
    to_fits_bytes,
    to_npy_bytes,
    validate_map,
    write_fits,
)
from lensing.limits import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smap():
    """A map whose every request field differs from the default, with substructure and noise."""
    return generate_map(MapRequest(
        profile_type="Elliptical NFW", M_vir=3.3e12, scale_radius=150.0, ellipticity=0.25,
        position_angle=35.0, grid_size=32, fov_kpc=800.0, z_lens=0.4, z_source=1.7,
        scenario="SIDM", seed=11, noise_sigma=0.003, center_x_kpc=40.0, center_y_kpc=-25.0, ra=150.25, dec=2.5,
    ))


@pytest.fixture(scope="module")
def smooth_map():
    return generate_map(MapRequest(grid_size=16))


def _fits_bytes(data: np.ndarray, header: fits.Header | None = None) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(data, header=header).writeto(buffer)
    return buffer.getvalue()


# --- .npy ----------------------------------------------------------------------------------------


def test_npy_file_round_trip_is_bit_exact(tmp_path, smap):
    path = tmp_path / "map.npy"
    save_npy(path, smap.convergence)
    loaded = load_npy(path)
    assert loaded.dtype == np.float64
    assert np.array_equal(loaded, smap.convergence)
    assert np.array_equal(np.load(path, allow_pickle=False), smap.convergence)  # plain numpy reads it


def test_npy_bytes_round_trip_and_float64_output(smap):
    assert np.array_equal(from_npy_bytes(to_npy_bytes(smap.convergence)), smap.convergence)
    single = smap.convergence.astype(np.float32)
    loaded = from_npy_bytes(to_npy_bytes(single))
    assert loaded.dtype == np.float64
    assert np.array_equal(loaded, single.astype(np.float64))


# --- FITS ----------------------------------------------------------------------------------------


def _expected_cards(smap) -> dict:
    # the halo's parameters last: the request's concentration is None once it is resolved into r_s
    return {**asdict(smap.request), **smap.geometry_dict(), **smap.parameters()}


def test_fits_file_round_trip_is_bit_exact(tmp_path, smap):
    path = tmp_path / "map.fits"
    write_fits(path, smap)
    kappa, info = read_fits(path)
    assert kappa.dtype == np.float64
    assert np.array_equal(kappa, smap.convergence)
    expected = _expected_cards(smap)
    for name in asdict(smap.request):  # the request reproduces the map: every field but grid_size (the shape)
        if name != "grid_size":
            assert info[name] == expected[name], name
    for name, value in info.items():
        if isinstance(value, float) and len(str(value)) > 20:  # FITS keeps 20 characters: 16 digits
            assert value == pytest.approx(expected[name], rel=1e-15), name
        else:
            assert value == expected[name], name
    assert {"pixel_scale_kpc", "pixel_scale_arcsec", "concentration", "kappa_s", "r200_kpc"} <= info.keys()


def test_fits_bytes_round_trip(smap):
    data = to_fits_bytes(smap)
    kappa, info = from_fits_bytes(data)
    assert np.array_equal(kappa, smap.convergence)
    assert read_fits(data)[1] == info
    assert info["M_vir"] == smap.request.M_vir and info["scenario"] == smap.request.scenario


def test_fits_pixel_scale_and_wcs_follow_the_grid(smap):
    """The lens-plane WCS (alternate key 'A') is linear in kpc and gives the grid's pixel centres."""
    header = fits.Header.fromstring(to_fits_bytes(smap)[: 2880 * 4])
    assert header["BITPIX"] == -64
    geometry = lens_geometry(smap.request.z_lens, smap.request.z_source)
    pixel_kpc = smap.request.fov_kpc / smap.request.grid_size
    assert header["PIXKPC"] == pixel_kpc == header["CDELT1A"] == header["CDELT2A"]
    assert header["PIXASEC"] == pytest.approx(pixel_kpc / geometry.kpc_per_arcsec, rel=1e-15)
    assert header["CUNIT1A"] == header["CUNIT2A"] == "kpc"
    # numpy map[i][j] is FITS pixel (j, i) 0-based: the WCS must give the pixel centres (X, Y) of the grid
    rows, cols = np.indices(smap.convergence.shape)
    x, y = WCS(header, key="A").pixel_to_world_values(cols, rows)
    np.testing.assert_allclose(x, smap.x_kpc, rtol=0, atol=1e-9 * smap.request.fov_kpc)
    np.testing.assert_allclose(y, smap.y_kpc, rtol=0, atol=1e-9 * smap.request.fov_kpc)


def test_fits_sky_coordinates_match_the_kpc_ones_at_the_lens_distance():
    """Round trip through astropy's WCS: the primary (celestial) WCS puts the host centre at (ra, dec) and
    every pixel at the angle its kpc offset from the host subtends at D_l: west along +x, north along +y."""
    request = MapRequest(grid_size=32, fov_kpc=900.0, z_lens=0.3, z_source=1.5, center_x_kpc=70.0,
                         center_y_kpc=-45.0, ra=210.5, dec=-33.25)
    smap = generate_map(request)
    header = fits.Header.fromstring(to_fits_bytes(smap)[: 2880 * 4])
    sky, plane = WCS(header), WCS(header, key="A")
    assert sky.has_celestial and sky.wcs.ctype[0] == "RA---TAN" and sky.wcs.radesys == "ICRS"
    halo = SkyCoord(request.ra * u.deg, request.dec * u.deg, frame="icrs")
    centre_pixel = plane.world_to_pixel_values(request.center_x_kpc, request.center_y_kpc)
    assert halo.separation(sky.pixel_to_world(*centre_pixel)).to_value(u.arcsec) < 1e-9
    rows, cols = np.indices(smap.convergence.shape)
    east, north = halo.spherical_offsets_to(sky.pixel_to_world(cols.ravel(), rows.ravel()))
    d_l = lens_geometry(request.z_lens, request.z_source).D_l_kpc
    x, y = plane.pixel_to_world_values(cols.ravel(), rows.ravel())
    tolerance = 1e-6 * request.fov_kpc  # TAN projection vs flat offsets: (angle)^2 ~ 1e-7 over this field
    np.testing.assert_allclose(-east.to_value(u.rad) * d_l, x - request.center_x_kpc, rtol=0, atol=tolerance)
    np.testing.assert_allclose(north.to_value(u.rad) * d_l, y - request.center_y_kpc, rtol=0, atol=tolerance)


def test_fits_geometry_reads_our_header_and_checks_the_request(smap):
    data = to_fits_bytes(smap)
    expected = MapGeometry(smap.request.fov_kpc, smap.request.z_lens, smap.request.z_source)
    assert fits_geometry(data) == expected
    assert fits_geometry(data, fov_kpc=800.0, z_lens=0.4, z_source=1.7) == expected
    for given, keyword in (({"fov_kpc": 1000.0}, "FOVKPC"), ({"z_lens": 0.5}, "Z_LENS"),
                           ({"z_source": 2.0}, "Z_SOURCE")):
        with pytest.raises(InputError, match=keyword) as error:
            fits_geometry(data, **given)
        assert error.value.field == keyword


def _celestial_header(side: int = 64, **cards) -> fits.Header:
    header = fits.Header({"NAXIS": 2, "NAXIS1": side, "NAXIS2": side, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN"})
    header.update(cards)
    return header


def test_fits_geometry_converts_a_celestial_pixel_scale_at_z_lens():
    """A foreign celestial WCS (CD matrix in arcsec, or CDELT with the default unit deg): kpc from D_l(z_lens)."""
    geometry = lens_geometry(0.35, 1.2)
    expected = 64 * 1.5 * geometry.kpc_per_arcsec
    header = _celestial_header(CUNIT1="arcsec", CUNIT2="arcsec", CD1_1=-1.5, CD2_2=1.5, CD1_2=0.0, CD2_1=0.0)
    assert fits_geometry(header, z_lens=0.35, z_source=1.2).fov_kpc == pytest.approx(expected, rel=1e-12)
    header = _celestial_header(CDELT1=-1.5 / 3600, CDELT2=1.5 / 3600)  # CUNIT absent: degrees by the standard
    assert fits_geometry(header, z_lens=0.35, z_source=1.2).fov_kpc == pytest.approx(expected, rel=1e-12)
    assert fits_geometry(header, fov_kpc=expected, z_lens=0.35, z_source=1.2).fov_kpc == expected


@pytest.mark.parametrize(("cards", "keyword"), [
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "PC1_2": 0.2, "PC2_1": -0.2}, "PC1_2"),  # rotated
    ({"CD1_1": -1e-4, "CD2_2": 1e-4, "CD2_1": 1e-5}, "CD2_1"),  # rotated
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "CROTA2": 15.0}, "CROTA2"),  # rotated (legacy)
    ({"CDELT1": -1e-4, "CDELT2": 1.2e-4}, "CDELT2"),  # non-square pixels
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "CUNIT1": "kpc", "CUNIT2": "kpc"}, "CUNIT1"),  # not an angle
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "CUNIT1": "furlong", "CUNIT2": "deg"}, "CUNIT1"),  # not a unit
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "FOVKPC": 50.0}, "CDELT1"),  # the header contradicts itself
    ({"CDELT1": -1e-4, "CDELT2": 1e-4, "H0": 67.0}, "H0"),  # another cosmology
])
def test_fits_geometry_refuses_what_it_cannot_convert_naming_the_card(cards, keyword):
    with pytest.raises(InputError) as error:
        fits_geometry(_celestial_header(**cards))
    assert error.value.field == keyword and keyword in str(error.value)


def test_fits_geometry_of_a_header_without_geometry_uses_the_request_or_defaults():
    header = fits.Header({"NAXIS": 2, "NAXIS1": 32, "NAXIS2": 32})
    assert fits_geometry(header) == MapGeometry()
    assert fits_geometry(header, fov_kpc=640.0, z_lens=0.2, z_source=1.0) == MapGeometry(640.0, 0.2, 1.0)


def test_fits_undefined_cards_read_back_as_none(smooth_map):
    _, info = from_fits_bytes(to_fits_bytes(smooth_map))
    assert info["scenario"] is None and info["seed"] is None and info["core_fraction"] is None
    assert info["n_subhalos"] == 0


def test_foreign_fits_yields_its_map_and_no_invented_cards():
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image)])  # image in an extension, as often
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    kappa, info = from_fits_bytes(buffer.getvalue())
    assert kappa.dtype == np.float64 and np.array_equal(kappa, image)
    assert info == {}


# --- validation ----------------------------------------------------------------------------------

BAD_MAPS = [
    (np.ones((4, 5)), "square"),
    (np.ones(16), "2-D"),
    (np.ones((2, 4, 4)), "2-D"),
    (np.where(np.eye(4) > 0, np.nan, 1.0), "NaN"),
    (np.where(np.eye(4) > 0, np.inf, 1.0), "Inf"),
    (np.ones((4, 4), dtype=complex), "dtype"),
    (np.ones((4, 4), dtype=bool), "dtype"),
    (np.full((2, 2), "a"), "dtype"),
    (np.zeros((0, 0)), "empty"),
]


@pytest.mark.parametrize(("array", "problem"), BAD_MAPS)
def test_validate_map_names_the_problem(array, problem):
    with pytest.raises(ValueError, match=problem):
        validate_map(array, name="kappa_map")
    with pytest.raises(ValueError, match="kappa_map"):
        validate_map(array, name="kappa_map")


def test_validate_map_rejects_ragged_and_object_input():
    with pytest.raises(ValueError, match="ragged"):
        validate_map([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="dtype object"):
        validate_map(np.array([[1.0, None], [2.0, 3.0]], dtype=object))


@pytest.mark.parametrize(("array", "problem"), [case for case in BAD_MAPS if case[0].dtype.kind != "U"])
def test_npy_reader_rejects_bad_maps(array, problem):
    buffer = io.BytesIO()
    np.save(buffer, array)
    with pytest.raises(ValueError, match=problem):
        from_npy_bytes(buffer.getvalue())


def test_npy_reader_refuses_pickles_npz_and_garbage():
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1.0, None], [2.0, 3.0]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a valid .npy map"):
        from_npy_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, kappa=np.ones((4, 4)))
    with pytest.raises(ValueError, match="npz"):
        from_npy_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="not a valid .npy map"):
        from_npy_bytes(b"not numpy at all")


def test_writers_refuse_bad_maps():
    with pytest.raises(ValueError, match="NaN"):
        to_npy_bytes(np.full((4, 4), np.nan))


@pytest.mark.parametrize(("array", "problem"), [
    (np.ones((4, 5)), "square"),
    (np.ones((2, 4, 4)), "2-D"),
    (np.where(np.eye(4) > 0, np.nan, 1.0), "NaN"),
])
def test_fits_reader_rejects_bad_maps(array, problem):
    with pytest.raises(ValueError, match=problem):
        from_fits_bytes(_fits_bytes(array))


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_fits_reader_rejects_garbage_truncation_and_missing_image(smap):
    data = to_fits_bytes(smap)
    with pytest.raises(ValueError, match="not a valid FITS map"):
        from_fits_bytes(b"SIMPLE? no" * 400)
    with pytest.raises(ValueError, match="not a valid FITS map"):
        from_fits_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="no HDU holds image data"):
        from_fits_bytes(_fits_bytes(None))


# --- PNG -----------------------------------------------------------------------------------------


def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(png), format="png")


def test_png_of_a_synthetic_map(tmp_path, smap):
    png = render_png(smap)
    pixels = _decode(png)
    width, height = FIGURE_SIZE_INCHES
    assert pixels.shape[:2] == (round(height * PNG_DPI), round(width * PNG_DPI))
    assert pixels[..., :3].std() > 0.05  # a picture, not a blank canvas
    save_png(tmp_path / "map.png", smap)
    assert (tmp_path / "map.png").read_bytes() == png


def test_png_of_a_bare_array_with_non_positive_pixels():
    kappa = np.random.default_rng(0).normal(0.0, 1.0, (16, 16))  # half the pixels are negative
    assert _decode(render_png(kappa, fov_kpc=500.0, title="noise")).ndim == 3
    assert _decode(render_png(-np.ones((8, 8)), fov_kpc=500.0)).ndim == 3  # nothing positive at all
    with pytest.raises(ValueError, match="fov_kpc"):
        render_png(kappa)


def test_map_figure_axes_colour_bar_and_log_scale(smap):
    figure = map_figure(smap.convergence, smap.request.fov_kpc, "title")
    axes, colour_bar = figure.axes
    image = axes.images[0]
    half = smap.request.fov_kpc / 2
    assert image.get_extent() == [-half, half, -half, half]
    assert image.origin == "lower"  # row i = 0 is the most negative y, as in the grid
    assert "kpc" in axes.get_xlabel() and "kpc" in axes.get_ylabel()
    assert "kappa" in colour_bar.get_ylabel()
    assert isinstance(image.norm, LogNorm)
    assert 0 < image.norm.vmin < image.norm.vmax == smap.convergence.max()
    assert image.get_array().min() >= image.norm.vmin  # non-positive noise pixels clipped to the floor
