"""One rule for comparing a map's results computed in two batch shapes: float32 round-off is no difference.

torch may pick other kernels for other batch shapes, which moves each network output by ~1e-7 of its scale:
an absolute 1e-6 covers values near zero such as a small ellipticity, 1e-3 kpc the centre (its network
output is in units of the 1000-kpc field, and an accurate centre is near zero, where a relative tolerance
means nothing), and the position angle, ill-posed as e -> 0, gets 0.01 degree.
"""

from __future__ import annotations

import pytest


def round_off_tolerance(name: str) -> float:
    """Absolute tolerance of the output `name` (e.g. "center_x_kpc", "position_angle_std", "M_vir")."""
    if name.startswith("position_angle"):
        return 1e-2
    return 1e-3 if name.startswith("center_") else 1e-6


def close_up_to_round_off(name: str, value: float, expected: float) -> bool:
    return value == pytest.approx(expected, rel=1e-5, abs=round_off_tolerance(name))
