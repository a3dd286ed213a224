"""Vectorised MC Dropout: one encoder pass, T head passes in one batched call, seeded per map.

Summaries are made in the space where errors are measured (log10 M, log10 r_s, e, centre): the centre is
the deterministic network's estimate (dropout off: measured more accurate than the mean of the samples,
whose dropout scatter shrinks only as 1/sqrt(T); docs/model/mc_samples_accuracy.py; the symmetrized mode,
with eight times the samples, takes their mean), the raw standard
deviation of the T samples is the epistemic spread, the root mean square of the head's learned per-map
spreads the aleatoric spread; then class probabilities, predictive entropy and mutual information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..cosmology import LensGeometry
from .encoding import ThetaScaler, reported_array, spread_units, with_offset
from .model import PINN


def dropout_masks(
    model: PINN, n_samples: int, seeds: Sequence[int | None], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted-dropout masks (B*T, dim) for each dropout site; map k's masks come from seeds[k] alone.

    Each unit is dropped when a 16-bit random integer from numpy's PCG64 falls below round(p * 2^16)
    (p exact to 1e-5): raw random bytes are far cheaper than float draws for the B*T*dim decisions,
    and a seed gives the same masks on any device.
    """
    p = model.head.p
    width = sum(model.head.site_dims)
    threshold = round(p * 65536)
    bits = np.concatenate(
        [np.frombuffer(np.random.default_rng(seed).bytes(2 * n_samples * width), dtype=np.uint16) for seed in seeds]
    )
    keep = torch.from_numpy((bits >= threshold).reshape(-1, width)).to(device=device, dtype=torch.float32)
    keep.mul_(1.0 / (1.0 - threshold / 65536))
    features_mask, hidden_mask = torch.split(keep, list(model.head.site_dims), dim=1)
    return features_mask, hidden_mask


@torch.inference_mode()
def sample_theta(model: PINN, x: torch.Tensor, noise: torch.Tensor, n_samples: int, seeds: Sequence[int | None],
                 scaler: ThetaScaler):
    """Absolute theta samples (B, T, 6), log spreads (B, T, 5), logits (B, T, C) and the point estimate
    (B, 1, 6), the deterministic network's theta (dropout off); T = 1 is that network alone."""
    if n_samples == 1:
        theta_z, log_spread, logits, offset = (out[:, None] for out in model(x, noise))
        theta = with_offset(scaler.unstandardise(theta_z), offset[:, 0])
        return theta, log_spread, logits, theta
    masks = dropout_masks(model, n_samples, seeds, x.device)
    theta_z, log_spread, logits, offset, point_z = model.sample(x, noise, masks)
    point = with_offset(scaler.unstandardise(point_z), offset)[:, None]
    return with_offset(scaler.unstandardise(theta_z), offset), log_spread, logits, point


@dataclass
class RawSummary:
    """Per-map MC summaries before calibration (numpy, float64)."""

    reported_centre: np.ndarray  # (B, 5) in REPORTED space
    reported_std: np.ndarray  # (B, 5) raw std of the samples (epistemic)
    learned_spread: np.ndarray  # (B, 5) RMS of the head's spreads over the samples (aleatoric)
    theta_centre: np.ndarray  # (B, 6)
    class_probs: np.ndarray  # (B, C)
    entropy: np.ndarray  # (B,)
    mutual_information: np.ndarray  # (B,)


def summarise(theta: torch.Tensor, log_spread: torch.Tensor, logits: torch.Tensor, geometry: LensGeometry,
              fov_kpc: float, point: torch.Tensor | None = None) -> RawSummary:
    """Turn samples into a centre, stds in the reported space and class statistics. The centre is the
    `point` estimate (B, 1, 6) (the deterministic network), or the mean of the samples when None."""
    samples = theta.double().cpu().numpy()
    stacked = reported_array(samples, geometry, fov_kpc)  # (B, T, 5)
    points = samples if point is None else point.double().cpu().numpy()
    learned = np.sqrt(np.mean(np.exp(2.0 * log_spread.double().cpu().numpy()), axis=1)) * spread_units(fov_kpc)
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()  # (B, T, C)
    mean_probs = probs.mean(axis=1)
    entropy = -(mean_probs * np.log(np.clip(mean_probs, 1e-12, None))).sum(-1)
    expected_entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1).mean(-1)
    return RawSummary(
        reported_centre=(stacked if point is None else reported_array(points, geometry, fov_kpc)).mean(axis=1),
        reported_std=stacked.std(axis=1, ddof=1) if samples.shape[1] > 1 else np.zeros_like(stacked[:, 0]),
        learned_spread=learned,
        theta_centre=points.mean(axis=1),
        class_probs=mean_probs,
        entropy=entropy,
        mutual_information=np.clip(entropy - expected_entropy, 0.0, None),
    )

