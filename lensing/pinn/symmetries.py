"""The map's eight symmetries (quarter turns, with and without a mirror) and what they do to theta.

A halo map turned or mirrored is the map of the same halo turned or mirrored: log kappa_s and log r_s stay,
the centre moves with the pixels and the ellipticity components (e cos 2phi, e sin 2phi) turn at twice the
angle. The network is not exactly invariant, and its errors on the eight views of a map are partly
independent, so averaging them (`Predictor.predict_batch(symmetrize=True)`) cuts its errors at eight times
the cost. Each symmetry's matrix `A` (original (x, y) -> the view's (x, y)) is read off the pixel grid
(`lensing.grid.pixel_grid`), so that it follows the library's axis convention instead of restating it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..grid import pixel_grid

_PROBE_SIDE = 4  # any even side: the grid's coordinates of a few pixels fix each matrix


@dataclass(frozen=True)
class Symmetry:
    """`quarter_turns` of np.rot90 over the last two axes, after a mirror of the last axis if `mirror`."""

    quarter_turns: int
    mirror: bool

    def apply(self, maps: torch.Tensor) -> torch.Tensor:
        """The view of maps (..., N, N)."""
        view = maps.flip(-1) if self.mirror else maps
        return torch.rot90(view, self.quarter_turns, dims=(-2, -1))

    @functools.cache  # noqa: B019 - eight instances, each fitted once
    def matrix(self) -> np.ndarray:
        """A (2, 2): the view shows at A @ r what the map shows at r (a signed permutation)."""
        x, y = pixel_grid(_PROBE_SIDE, 1.0)
        # each view pixel holds the original pixel at A^-1 @ (its position); the fit of positions @ M = sources
        # gives M = (A^-1)^T, which is A itself for an orthogonal A
        seen_x, seen_y = (self.apply(torch.from_numpy(c)).numpy() for c in (x, y))
        positions = np.stack([x.ravel(), y.ravel()], axis=1)
        sources = np.stack([seen_x.ravel(), seen_y.ravel()], axis=1)
        return np.rint(np.linalg.lstsq(positions, sources, rcond=None)[0])


SYMMETRIES = tuple(Symmetry(turns, mirror) for mirror in (False, True) for turns in range(4))


def to_original_frame(theta: torch.Tensor, log_spread: torch.Tensor, symmetry: Symmetry
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Theta samples (..., 6) and log spreads (..., 5) estimated on a view, in the original map's frame."""
    back = torch.as_tensor(symmetry.matrix().T, dtype=theta.dtype, device=theta.device)  # A^-1 = A^T
    centre = theta[..., 4:6] @ back.T
    e1, e2 = theta[..., 2], theta[..., 3]
    shape = torch.stack([torch.stack([e1, e2], -1), torch.stack([e2, -e1], -1)], -2)  # traceless shape tensor
    turned = back @ shape @ back.T
    theta = torch.cat([theta[..., :2], turned[..., 0, 0:1], turned[..., 0, 1:2], centre], dim=-1)
    centre_spread = log_spread[..., 3:5] @ back.abs().T.to(log_spread.dtype)  # a signed permutation of x, y
    return theta, torch.cat([log_spread[..., :3], centre_spread], dim=-1)
