"""The PINN: a deterministic CNN encoder and a small stochastic (MC Dropout) head.

All dropout lives in the head, so MC Dropout runs the encoder once per map and the head T times on
repeated features in one vectorised pass (docs/design.md section 5). The head takes explicit dropout masks
when sampling, so that each map's samples depend only on its own seed, not on its batch neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PINNConfig:
    """Architecture hyper-parameters (stored in the model card, used to rebuild the network)."""

    input_size: int = 64
    in_channels: int = 3
    widths: tuple[int, ...] = (48, 96, 192)
    feature_dim: int = 256
    profile_bins: int = 24
    detail_widths: tuple[int, ...] = ()  # empty: no substructure branch (the 1.0 architecture)
    head_hidden: int = 256
    dropout: float = 0.1
    n_theta: int = 4
    n_classes: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PINNConfig:
        data = dict(data)
        data["widths"] = tuple(data["widths"])
        data["detail_widths"] = tuple(data.get("detail_widths", ()))
        return cls(**data)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


class RadialProfile(nn.Module):
    """Mean of each input channel in rings of equal width around the map centre (fixed weights).

    Halos are centred by convention, so the ring means are the projected profile: giving the network
    this summary directly makes amplitude and scale (kappa_s, r_s) a nearly linear read-out instead of
    something the convolutions must assemble.
    """

    MAX_RADIUS = 0.5 * 2**0.5  # the corner of the map, in units of the field of view
    weights: torch.Tensor  # (N * N, bins) buffer: each pixel's share of its ring mean

    def __init__(self, size: int, bins: int) -> None:
        super().__init__()
        centres = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) / size
        radius = torch.sqrt(centres[None, :] ** 2 + centres[:, None] ** 2).flatten()
        ring = torch.clamp((radius / self.MAX_RADIUS * bins).long(), max=bins - 1)
        weights = torch.zeros(size * size, bins, dtype=torch.float64)
        weights[torch.arange(size * size), ring] = 1.0
        weights = weights / weights.sum(0).clamp(min=1.0)
        self.register_buffer("weights", weights.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(2) @ self.weights).flatten(1)


class SubstructureBranch(nn.Module):
    """Small-scale structure: a high-pass of the log-like kappa channel, a full-resolution CNN, pooling.

    Subhalos are one-pixel bumps on a host that spans decades; subtracting a fixed Gaussian blur (sigma
    one pixel) removes the host and leaves the bumps, which the stride-4 stem of the main encoder would
    average away. Normalisation is per map (GroupNorm with one group), so noisy maps in a batch do not
    swamp the faint bumps of clean ones. Mean and max pooling read out how many bumps there are and how
    strong the largest is: what separates CDM (many small subhalos) from WDM (few).
    """

    BLUR_SIGMA_PX = 1.0
    blur: torch.Tensor  # (1, 1, 5, 5) Gaussian kernel buffer

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        offsets = torch.arange(-2, 3, dtype=torch.float64)
        kernel_1d = torch.exp(-0.5 * (offsets / self.BLUR_SIGMA_PX) ** 2)
        kernel = torch.outer(kernel_1d, kernel_1d)
        self.register_buffer("blur", (kernel / kernel.sum()).float()[None, None], persistent=False)
        layers: list[nn.Module] = []
        previous = 1
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(1, width),
                       nn.GELU()]
            previous = width
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(2 * previous, previous)
        self.out_dim = previous

    def forward(self, log_kappa: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, N) log-like channel -> (B, out_dim) features."""
        smooth = F.conv2d(F.pad(log_kappa, (2, 2, 2, 2), mode="replicate"), self.blur)
        y = self.body(log_kappa - smooth)
        return F.gelu(self.project(torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)))


class Encoder(nn.Module):
    """Patchify stem (stride 4), residual stages with 2x downsampling, flatten; plus the radial profile
    and, when configured, the substructure branch.

    Convolutional features and the ring means of the kappa channels are merged by a linear layer; the
    substructure features are appended to them (`out_dim` = feature_dim + the branch's width).
    """

    def __init__(self, config: PINNConfig) -> None:
        super().__init__()
        widths = config.widths
        layers: list[nn.Module] = [
            nn.Conv2d(config.in_channels, widths[0], 4, stride=4, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.GELU(),
        ]
        for index, width in enumerate(widths):
            if index > 0:
                layers += [nn.Conv2d(widths[index - 1], width, 2, stride=2, bias=False), nn.BatchNorm2d(width),
                           nn.GELU()]
            layers.append(ResidualBlock(width))
        self.body = nn.Sequential(*layers)
        side = config.input_size // 4 // 2 ** (len(widths) - 1)
        self.profile = RadialProfile(config.input_size, config.profile_bins)
        profile_dim = (config.in_channels - 1) * config.profile_bins  # the radius channel is not profiled
        self.profile_mlp = nn.Sequential(nn.Linear(profile_dim, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU())
        self.features = nn.Linear(widths[-1] * side * side + 256, config.feature_dim)
        self.detail = SubstructureBranch(config.detail_widths) if config.detail_widths else None
        self.out_dim = config.feature_dim + (self.detail.out_dim if self.detail is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        profile = self.profile_mlp(self.profile(x[:, :-1]))
        features = F.gelu(self.features(torch.cat([self.body(x).flatten(1), profile], dim=1)))
        if self.detail is None:
            return features
        return torch.cat([features, self.detail(x[:, :1])], dim=1)


class StochasticHead(nn.Module):
    """Dropout -> Linear -> GELU -> Dropout -> Linear, giving theta (standardised) and class logits."""

    n_dropout_sites = 2

    def __init__(self, config: PINNConfig, in_dim: int) -> None:
        super().__init__()
        self.p = config.dropout
        self.n_theta = config.n_theta
        self.hidden = nn.Linear(in_dim, config.head_hidden)
        self.out = nn.Linear(config.head_hidden, config.n_theta + config.n_classes)
        self.site_dims = (in_dim, config.head_hidden)

    def forward(self, features: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Masks (scaled by 1/(1-p)) make the pass stochastic; without masks dropout follows self.training."""
        if masks is None:
            h = F.dropout(features, self.p, self.training)
            h = F.dropout(F.gelu(self.hidden(h)), self.p, self.training)
        else:
            h = F.gelu(self.hidden(features * masks[0])) * masks[1]
        out = self.out(h)
        return out[:, : self.n_theta], out[:, self.n_theta :]


class PINN(nn.Module):
    """Encoder + stochastic head. `forward` is one pass; `sample` draws T MC Dropout samples per map."""

    def __init__(self, config: PINNConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.head = StochasticHead(config, self.encoder.out_dim)

    def forward(self, x: torch.Tensor):
        return self.head(self.encoder(x))

    def sample(self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor]):
        """theta (B, T, n_theta) and logits (B, T, n_classes) for masks of shape (B*T, site_dim)."""
        features = self.encoder(x)
        n_samples = masks[0].shape[0] // features.shape[0]
        repeated = features.repeat_interleave(n_samples, dim=0)
        theta, logits = self.head(repeated, masks)
        return theta.unflatten(0, (-1, n_samples)), logits.unflatten(0, (-1, n_samples))
