"""Lensing Serve's physics and ML core: NFW lensing maps, dark-matter scenarios and the PINN.

This package never imports Ray: it is a library a scientist can use in a notebook.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version

from .cosmology import LensGeometry, lens_geometry
from .halo import HaloParameters
from .profiles import NFW, CoredNFW, EllipticalNFW, TruncatedNFW
from .synthetic import MapRequest, SyntheticMap, generate_batch, generate_map, sample_hosts

try:  # the one definition is pyproject.toml's `version`, read from the installed package's metadata
    __version__ = _installed_version("lensing-serve")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "LensGeometry",
    "lens_geometry",
    "HaloParameters",
    "NFW",
    "EllipticalNFW",
    "CoredNFW",
    "TruncatedNFW",
    "MapRequest",
    "SyntheticMap",
    "generate_map",
    "generate_batch",
    "sample_hosts",
]
