"""Vectorised MC Dropout: one encoder pass, T head passes in one batched call, seeded per map.

Summaries are made in the space where errors are measured (log10 M, log10 r_s, e, centre): the mean and
the raw standard deviation of the T samples (the epistemic spread), the root mean square of the head's
learned per-map spreads (the aleatoric spread), class probabilities, predictive entropy and mutual
information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..cosmology import LensGeometry
from .encoding import REPORTED, ThetaScaler, physical_from_theta, reported_from_physical, spread_units, with_offset
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
    """Absolute theta samples (B, T, 6), log spreads (B, T, 5) and logits (B, T, C); T = 1 is the
    deterministic network (dropout off)."""
    if n_samples == 1:
        theta_z, log_spread, logits, offset = (out[:, None] for out in model(x, noise))
        return with_offset(scaler.unstandardise(theta_z), offset[:, 0]), log_spread, logits
    masks = dropout_masks(model, n_samples, seeds, x.device)
    theta_z, log_spread, logits, offset = model.sample(x, noise, masks)
    return with_offset(scaler.unstandardise(theta_z), offset), log_spread, logits


@dataclass
class RawSummary:
    """Per-map MC summaries before calibration (numpy, float64)."""

    reported_mean: np.ndarray  # (B, 5) in REPORTED space
    reported_std: np.ndarray  # (B, 5) raw std of the samples (epistemic)
    learned_spread: np.ndarray  # (B, 5) RMS of the head's spreads over the samples (aleatoric)
    theta_mean: np.ndarray  # (B, 6)
    class_probs: np.ndarray  # (B, C)
    entropy: np.ndarray  # (B,)
    mutual_information: np.ndarray  # (B,)


def summarise(theta: torch.Tensor, log_spread: torch.Tensor, logits: torch.Tensor, geometry: LensGeometry,
              fov_kpc: float) -> RawSummary:
    """Turn samples into means/stds in the reported space and class statistics."""
    samples = theta.double().cpu().numpy()
    physical = physical_from_theta(samples, geometry, fov_kpc)
    reported = reported_from_physical(physical)
    stacked = np.stack([reported[name] for name in REPORTED], axis=-1)  # (B, T, 5)
    learned = np.sqrt(np.mean(np.exp(2.0 * log_spread.double().cpu().numpy()), axis=1)) * spread_units(fov_kpc)
    probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()  # (B, T, C)
    mean_probs = probs.mean(axis=1)
    entropy = -(mean_probs * np.log(np.clip(mean_probs, 1e-12, None))).sum(-1)
    expected_entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1).mean(-1)
    return RawSummary(
        reported_mean=stacked.mean(axis=1),
        reported_std=stacked.std(axis=1, ddof=1) if samples.shape[1] > 1 else np.zeros_like(stacked[:, 0]),
        learned_spread=learned,
        theta_mean=samples.mean(axis=1),
        class_probs=mean_probs,
        entropy=entropy,
        mutual_information=np.clip(entropy - expected_entropy, 0.0, None),
    )
