"""Which calibration factors a map's intervals use: its noise bin, its estimated mass bin, and whether it is
reported as "none".

The raw spread (MC Dropout and learned) follows each map, but not in proportion to its error: one k on
the whole training mixture over-covered clean maps and under-covered noisy ones, and one k per noise bin
still over-covered smooth hosts, because three maps in four carry substructure and set k for all. Within
a noise bin the spread still fell short on faint halos and overshot on massive ones (a 4,000-map sweep at
sigma 0.005: M's 68 % interval covered 50 % of hosts below 10^11.75 Msun and 94 % above 10^13.25): the
lighter the halo, the less its map says above the noise, more than the spread admits. So k is fitted, and
applied, per cell: the map's noise bin (sigma per pixel at the network's input resolution, given or
estimated), crossed with the bin of its estimated log10 M_vir, crossed with the group of the class the map
is reported as: "none" (no detectable substructure), "substructure" (CDM or WDM) or "cored" (SIDM). A cored
host departs from the NFW profile the mass is read through, and its mass errors are twice the others': with
SIDM in the "substructure" group (until 2.6.0), a 4,000-map sweep found M's 68 % interval covering 61.6 %
of SIDM hosts and 72-76 % of CDM and WDM hosts. All three are known at inference time, from the map alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..scenarios import NO_SUBSTRUCTURE, NONE_CLASS, SCENARIO_CLASS

# noiseless (an estimate of a clean map stays below 5e-5; sigma 0.0005 estimates above 4.8e-4), faint, low,
# moderate, high. Faint noise has a bin of its own: the training mixture's noisy maps start at sigma 0.001,
# and with them in the clean bin their larger errors set k for noiseless maps, which then over-covered.
NOISE_BIN_EDGES = (0.0003, 0.0025, 0.0075, 0.015)
# the estimated log10 M_vir [Msun]: the quarters of the training box (10^11 to 10^14 Msun)
MASS_BIN_EDGES = (11.75, 12.5, 13.25)
SUBSTRUCTURE = "substructure"  # the group of maps reported as CDM or WDM
CORED = "cored"  # the group of maps reported as SIDM
GROUPS = {NO_SUBSTRUCTURE: "maps whose most probable class is 'none'",
          SUBSTRUCTURE: "maps whose most probable class is 'CDM' or 'WDM'",
          CORED: "maps whose most probable class is 'SIDM' (a cored host)"}


def bin_index(values, edges: Sequence[float]) -> np.ndarray:
    """Index (B,) of each value's bin: 0 below the first edge, len(edges) above the last."""
    return np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float), side="right")


def noise_bin(sigma_at_input, edges: Sequence[float] = NOISE_BIN_EDGES) -> np.ndarray:
    """Index (B,) of each map's noise bin (sigma per pixel at the network's input resolution)."""
    return bin_index(sigma_at_input, edges)


def mass_bin(log10_mass, edges: Sequence[float] = MASS_BIN_EDGES) -> np.ndarray:
    """Index (B,) of each map's mass bin (its estimated log10 M_vir)."""
    return bin_index(log10_mass, edges)


def group_members(class_probs: np.ndarray) -> dict[str, np.ndarray]:
    """{group: (B,) bool}: the maps of each group of `GROUPS`, by their most probable class."""
    reported = np.asarray(class_probs).argmax(axis=1)
    none, cored = reported == NONE_CLASS, reported == SCENARIO_CLASS["SIDM"]
    return {NO_SUBSTRUCTURE: none, SUBSTRUCTURE: ~none & ~cored, CORED: cored}
