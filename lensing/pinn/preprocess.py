"""Input normalisation for the PINN: kappa spanning five decades -> well-scaled network channels.

Two asinh channels (linear below their softening scale, logarithmic above) keep both the faint outskirts
and the cusp visible and tolerate zero or negative pixels from noise; a third channel holds the radius
from the map centre (CoordConv), where the network's locator puts the halo's peak. Maps of any square size are
resampled to the network's input size in the normalised space (bilinear, antialiased when shrinking).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..render import unit_grid

SOFTENING = (3e-4, 3e-2)
CHANNEL_SCALE = (9.0, 5.0)
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor, float)
NOISE_FLOOR = 1e-4  # noise below this is "noiseless" for the network's noise feature


def normalise(kappa: torch.Tensor) -> torch.Tensor:
    """(B, N, N) convergence -> (B, 2, N, N) asinh channels of order unity."""
    channels = [torch.asinh(kappa / s) / c for s, c in zip(SOFTENING, CHANNEL_SCALE)]
    return torch.stack(channels, dim=1)


def prepare_input(kappa: torch.Tensor, size: int) -> torch.Tensor:
    """Network input (B, 3, size, size) from square maps (B, N, N) of any N."""
    x = normalise(kappa)
    n = kappa.shape[-1]
    if n != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=n > size)
    grid_x, grid_y = unit_grid(size, x.dtype, x.device)
    radius = (2.0 * torch.sqrt(grid_x**2 + grid_y**2)).expand(x.shape[0], 1, size, size)
    return torch.cat([x, radius], dim=1)


def noise_feature(sigma: torch.Tensor, map_side: int, size: int) -> torch.Tensor:
    """The head's noise input (B, 1): log10 of the per-pixel sigma at the network's resolution, of order one.

    Shrinking a map of side N to `size` averages about (N / size)^2 pixels, which divides white noise by
    N / size; the feature is what the network sees, so one trained network serves every map side.
    """
    return ((torch.log10(noise_at_input(sigma, map_side, size) + NOISE_FLOOR) + 2.5) / 1.5)[:, None].float()


def noise_at_input(sigma: ArrayOrTensor, map_side: int, size: int) -> ArrayOrTensor:
    """Per-pixel noise sigma of an N-pixel map once shrunk to the network's `size` (arrays or tensors)."""
    return sigma / max(1.0, map_side / size)
