"""Which calibration factors a map's intervals use: its noise bin and whether it is reported as "none".

The raw spread (MC Dropout and learned) follows each map, but not in proportion to its error: one k on
the whole training mixture over-covered clean maps and under-covered noisy ones, and one k per noise bin
still over-covered smooth hosts, because three maps in four carry substructure and set k for all. So k is
fitted, and applied, per group: the map's noise bin (sigma per pixel at the network's input resolution,
given or estimated) crossed with the class the map is reported as ("none": no detectable substructure,
or "substructure": any scenario). Both are known at inference time, from the map alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..scenarios import NO_SUBSTRUCTURE, NONE_CLASS

# noiseless (an estimate of a clean map stays below 5e-5; sigma 0.0005 estimates above 4.8e-4), faint, low,
# moderate, high. Faint noise has a bin of its own: the training mixture's noisy maps start at sigma 0.001,
# and with them in the clean bin their larger errors set k for noiseless maps, which then over-covered.
NOISE_BIN_EDGES = (0.0003, 0.0025, 0.0075, 0.015)
SUBSTRUCTURE = "substructure"  # the group of maps reported as any scenario


def noise_bin(sigma_at_input, edges: Sequence[float] = NOISE_BIN_EDGES) -> np.ndarray:
    """Index (B,) of each map's noise bin: 0 below the first edge, len(edges) above the last."""
    return np.searchsorted(np.asarray(edges, dtype=float), np.asarray(sigma_at_input, dtype=float), side="right")


def group_members(class_probs: np.ndarray) -> dict[str, np.ndarray]:
    """{group: (B,) bool}: the maps reported as "none" (most probable class) and all others."""
    none = np.asarray(class_probs).argmax(axis=1) == NONE_CLASS
    return {NO_SUBSTRUCTURE: none, SUBSTRUCTURE: ~none}
