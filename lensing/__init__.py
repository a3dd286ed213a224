"""Lensing Serve's physics and ML core: NFW lensing maps, dark-matter scenarios and the PINN.

This package never imports Ray: it is a library a scientist can use in a notebook.

The names below load on first use (PEP 562), so that a program which needs only a light submodule,
e.g. the sweep driver's `lensing.cosmology` and `lensing.limits` for config validation, does not pay for
torch: `lensing.synthetic` imports it.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version
from typing import TYPE_CHECKING, Any

try:  # the one definition is pyproject.toml's `version`, read from the installed package's metadata
    __version__ = _installed_version("lensing-serve")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "LensGeometry": "cosmology",
    "lens_geometry": "cosmology",
    "HaloParameters": "halo",
    "NFW": "profiles",
    "EllipticalNFW": "profiles",
    "CoredNFW": "profiles",
    "TruncatedNFW": "profiles",
    "MapRequest": "synthetic",
    "SyntheticMap": "synthetic",
    "generate_map": "synthetic",
    "generate_batch": "synthetic",
    "sample_hosts": "synthetic",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from .cosmology import LensGeometry, lens_geometry  # noqa: F401
    from .halo import HaloParameters  # noqa: F401
    from .profiles import NFW, CoredNFW, EllipticalNFW, TruncatedNFW  # noqa: F401
    from .synthetic import MapRequest, SyntheticMap, generate_batch, generate_map, sample_hosts  # noqa: F401


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` the first time it is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lensing' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "__version__"})
