"""Lensing Serve's physics and ML core: NFW lensing maps, dark-matter scenarios and the PINN.

This package never imports Ray: it is a library a scientist can use in a notebook.
"""

from .cosmology import LensGeometry, lens_geometry
from .halo import HaloParameters
from .profiles import NFW, CoredNFW, EllipticalNFW, TruncatedNFW
from .synthetic import MapRequest, SyntheticMap, generate_batch, generate_map, sample_hosts

__version__ = "0.1.0"

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
