"""Per-pixel noise of a convergence map, estimated from the map itself when the caller does not give it.

White pixel noise of standard deviation sigma gives second differences (x[i-1] - 2 x[i] + x[i+1]) of
standard deviation sqrt(6) sigma, while a smooth host contributes only its curvature, which is small
everywhere but at a few cusp pixels. The median absolute second difference along both axes (a robust
scale: subhalos and the cusp are outliers) therefore estimates sigma; on a noiseless map it returns the
host's curvature floor, far below any noise worth reporting. numpy only, so the service can report the
estimate without the model.
"""

from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): median absolute deviation -> standard deviation
SECOND_DIFFERENCE_GAIN = np.sqrt(6.0)  # std of a second difference of white noise, per unit sigma


def estimate_noise_sigma(maps: np.ndarray) -> np.ndarray:
    """(B, N, N) or (N, N) maps -> per-map estimate of the per-pixel noise standard deviation, shape (B,)."""
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    rows = array[:, :-2, :] - 2.0 * array[:, 1:-1, :] + array[:, 2:, :]
    cols = array[:, :, :-2] - 2.0 * array[:, :, 1:-1] + array[:, :, 2:]
    both = np.concatenate([np.abs(rows).reshape(len(array), -1), np.abs(cols).reshape(len(array), -1)], axis=1)
    return MAD_TO_SIGMA * np.median(both, axis=1) / SECOND_DIFFERENCE_GAIN
