"""The PINN: a fixed locator, a deterministic CNN encoder and a small stochastic (MC Dropout) head.

The locator finds the halo's peak and shifts the map so that the peak sits on the central pixel: the
radial profile and the radius channel assume a centred halo, and the network then only predicts the
small residual of the centre. All dropout lives in the head, so MC Dropout runs the encoder once per map
and the head T times on repeated features in one vectorised pass (docs/design.md section 5). The head
takes explicit dropout masks when sampling, so that each map's samples depend only on its own seed, not
on its batch neighbours. Besides theta and the class logits the head predicts, per map, the log of the
expected error of its own estimate in every reported quantity (the aleatoric spread, learned with a
Gaussian likelihood); it also reads the map's noise level, given or estimated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..scenarios import CLASS_NAMES
from .encoding import N_THETA, REPORTED


@dataclass(frozen=True)
class PINNConfig:
    """Architecture hyper-parameters (stored in the model card, used to rebuild the network)."""

    input_size: int = 64
    in_channels: int = 3
    widths: tuple[int, ...] = (48, 96, 192)
    feature_dim: int = 256
    profile_bins: int = 24
    detail_widths: tuple[int, ...] = ()  # empty: no substructure branch (the 1.0 architecture)
    detail_channels: int = 1  # asinh channels the substructure branch reads (1: the log-like one; 2: both)
    head_hidden: int = 256
    dropout: float = 0.1
    n_theta: int = N_THETA
    n_spreads: int = len(REPORTED)  # one learned spread per reported quantity
    n_classes: int = len(CLASS_NAMES)

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

    The locator has put the halo's peak on the map centre, so the ring means are the projected profile:
    giving the network this summary directly makes amplitude and scale (kappa_s, r_s) a nearly linear
    read-out instead of something the convolutions must assemble.
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
    """Small-scale structure: a high-pass of the asinh kappa channels, a full-resolution CNN, pooling.

    Subhalos are one-pixel bumps on a host that spans decades; subtracting a fixed Gaussian blur (sigma
    one pixel) removes the host and leaves the bumps, which the stride-4 stem of the main encoder would
    average away. With two channels it sees each bump both relative to the host (the log-like channel)
    and in absolute kappa (the channel that stays linear up to ~0.03), which tracks the subhalo's mass.
    Normalisation is per map (GroupNorm with one group), so noisy maps in a batch do not swamp the faint
    bumps of clean ones. Mean and max pooling read out how many bumps there are and how strong the
    largest is: what separates CDM (many small subhalos) from WDM (few).
    """

    BLUR_SIGMA_PX = 1.0
    blur: torch.Tensor  # (1, 1, 5, 5) Gaussian kernel buffer

    def __init__(self, widths: tuple[int, ...], channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        offsets = torch.arange(-2, 3, dtype=torch.float64)
        kernel_1d = torch.exp(-0.5 * (offsets / self.BLUR_SIGMA_PX) ** 2)
        kernel = torch.outer(kernel_1d, kernel_1d)
        self.register_buffer("blur", (kernel / kernel.sum()).float()[None, None], persistent=False)
        layers: list[nn.Module] = []
        previous = channels
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(1, width),
                       nn.GELU()]
            previous = width
        self.body = nn.Sequential(*layers)
        self.project = nn.Linear(2 * previous, previous)
        self.out_dim = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (B, C, N, N) -> (B, out_dim) features of its first `channels` (asinh) channels."""
        kappa = x[:, : self.channels]
        blur = self.blur.expand(self.channels, 1, -1, -1)
        smooth = F.conv2d(F.pad(kappa, (2, 2, 2, 2), mode="replicate"), blur, groups=self.channels)
        y = self.body(kappa - smooth)
        return F.gelu(self.project(torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)))


class Locator(nn.Module):
    """Peak of the blurred cusp channel (sub-pixel: a 2-D quadratic fit) and the map shifted to put it at the centre.

    The blur (sigma 2.5 px, zero padding so that noise at the border cannot win) keeps single-pixel noise
    and subhalos from winning the argmax; the shift is bilinear with border padding and at most MAX_SHIFT
    of the field per axis. On a map whose halo is buried in noise the peak is noise, and the network's
    residual (trained with a robust loss) and its learned spread carry that. Fixed weights: nothing here
    is trained.
    """

    BLUR_SIGMA_PX = 2.5
    BLUR_RADIUS_PX = 6
    MAX_SHIFT = 0.12  # fraction of the field of view per axis

    def __init__(self) -> None:
        super().__init__()
        self.blur_cache: dict[int, torch.Tensor] = {}

    def _blur_matrix(self, size: int) -> torch.Tensor:
        """(size, size) float64 band matrix B: B @ X @ B is the Gaussian blur of X with zero padding."""
        if size not in self.blur_cache:
            offsets = torch.arange(-self.BLUR_RADIUS_PX, self.BLUR_RADIUS_PX + 1, dtype=torch.float64)
            kernel = torch.exp(-0.5 * (offsets / self.BLUR_SIGMA_PX) ** 2)
            kernel = kernel / kernel.sum()
            distance = torch.arange(size)[:, None] - torch.arange(size)[None, :]
            inside = distance.abs() <= self.BLUR_RADIUS_PX
            index = (distance + self.BLUR_RADIUS_PX).clamp(0, 2 * self.BLUR_RADIUS_PX)
            self.blur_cache[size] = torch.where(inside, kernel[index], torch.zeros((), dtype=torch.float64))
        return self.blur_cache[size]

    def peak(self, channel: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, 2) peak position (x, y) in units of the field of view from the map centre."""
        size = channel.shape[-1]
        # separable, as two float64 matrix products: float32 convolutions round differently for other batch
        # sizes (the argmax and vertex would carry that into every output, and a map's result must not
        # depend on its neighbours), and a float64 13 x 13 convolution takes most of a training step
        band = self._blur_matrix(size).to(channel.device)
        smooth = band @ channel[:, 0].double() @ band
        index = smooth.flatten(1).argmax(dim=1)
        # the 3 x 3 stencil around the brightest pixel (moved inside the map when that pixel is on its edge)
        row, col = (index // size).clamp(1, size - 2), (index % size).clamp(1, size - 2)
        batch = torch.arange(channel.shape[0], device=channel.device)
        value = lambda dr, dc: smooth[batch, row + dr, col + dc]  # noqa: E731
        # vertex of the quadratic surface through the stencil: gradient g, Hessian H, step = -H^-1 g. The
        # cross term matters: a tilted elliptical peak's maximum along a pixel row is not the peak itself
        gx, gy = 0.5 * (value(0, 1) - value(0, -1)), 0.5 * (value(1, 0) - value(-1, 0))
        hxx = value(0, 1) - 2 * value(0, 0) + value(0, -1)
        hyy = value(1, 0) - 2 * value(0, 0) + value(-1, 0)
        hxy = 0.25 * (value(1, 1) - value(1, -1) - value(-1, 1) + value(-1, -1))
        det = hxx * hyy - hxy**2
        is_maximum = (det > 0) & (hxx < 0)  # else (a flat or saddle-shaped stencil): the pixel itself
        det = torch.where(is_maximum, det, torch.ones_like(det))
        dx = torch.where(is_maximum, (hxy * gy - hyy * gx) / det, torch.zeros_like(det)).clamp(-1.0, 1.0)
        dy = torch.where(is_maximum, (hxy * gx - hxx * gy) / det, torch.zeros_like(det)).clamp(-1.0, 1.0)
        position = torch.stack([col + dx, row + dy], dim=1).to(channel.dtype)
        return ((position - (size - 1) / 2) / size).clamp(-self.MAX_SHIFT, self.MAX_SHIFT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input (B, C, S, S) -> (recentred input, offset (B, 2)); the last channel (radius) stays put."""
        offset = self.peak(x[:, 1:2])
        affine = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
        affine[:, 0, 0] = affine[:, 1, 1] = 1.0
        affine[:, :, 2] = 2.0 * offset
        grid = F.affine_grid(affine, list(x[:, :-1].shape), align_corners=False)
        shifted = F.grid_sample(x[:, :-1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return torch.cat([shifted, x[:, -1:]], dim=1).contiguous(memory_format=layout), offset


class Encoder(nn.Module):
    """Patchify stem (stride 4), residual stages with 2x downsampling, flatten; plus the radial profile
    and, when configured, the substructure branch.

    The substructure branch reads the map as it came, not the locator's output: its convolutions and
    global pooling do not need a centred halo, and the locator's sub-pixel (bilinear) shift would average
    each one-pixel subhalo bump with its neighbours (docs/design.md section 5 has the trials).

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
        self.detail = SubstructureBranch(config.detail_widths, config.detail_channels) if config.detail_widths else None
        self.out_dim = config.feature_dim + (self.detail.out_dim if self.detail is not None else 0)

    def forward(self, centred: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Features of the locator's centred input; the substructure branch reads the raw input instead."""
        profile = self.profile_mlp(self.profile(centred[:, :-1]))
        features = F.gelu(self.features(torch.cat([self.body(centred).flatten(1), profile], dim=1)))
        if self.detail is None:
            return features
        return torch.cat([features, self.detail(raw)], dim=1)


class StochasticHead(nn.Module):
    """Dropout -> Linear -> GELU -> Dropout -> Linear, giving theta (standardised), the log of the learned
    spreads and class logits."""

    n_dropout_sites = 2

    def __init__(self, config: PINNConfig, in_dim: int) -> None:
        super().__init__()
        self.p = config.dropout
        self.split = [config.n_theta, config.n_spreads, config.n_classes]
        self.hidden = nn.Linear(in_dim, config.head_hidden)
        self.out = nn.Linear(config.head_hidden, sum(self.split))
        self.site_dims = (in_dim, config.head_hidden)

    def forward(self, features: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Masks (scaled by 1/(1-p)) make the pass stochastic; without masks dropout follows self.training."""
        if masks is None:
            h = F.dropout(features, self.p, self.training)
            h = F.dropout(F.gelu(self.hidden(h)), self.p, self.training)
        else:
            h = F.gelu(self.hidden(features * masks[0])) * masks[1]
        theta, log_spread, logits = torch.split(self.out(h), self.split, dim=1)
        return theta, log_spread.clamp(-12.0, 3.0), logits


class PINN(nn.Module):
    """Locator + encoder + stochastic head. `forward` is one pass; `sample` draws T MC Dropout samples.

    Both take the network input (B, C, S, S) and the noise feature (B, 1) (`preprocess.noise_feature`) and
    return theta (standardised; its centre part is the residual from `offset`), log spreads, class logits
    and the locator's offset (B, 2) in units of the field of view.
    """

    def __init__(self, config: PINNConfig) -> None:
        super().__init__()
        self.config = config
        self.locator = Locator()
        self.encoder = Encoder(config)
        self.head = StochasticHead(config, self.encoder.out_dim + 1)

    def features(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input (B, 1 + encoder.out_dim) and the locator's offset (B, 2)."""
        centred, offset = self.locator(x)
        # the noise feature first: a fine-tune that appends encoder features (a substructure branch) keeps
        # the source head's columns in front (checkpoint.load_pretrained)
        return torch.cat([noise, self.encoder(centred, x)], dim=1), offset

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        features, offset = self.features(x, noise)
        return (*self.head(features), offset)

    def sample(self, x: torch.Tensor, noise: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor]):
        """theta (B, T, n_theta), log spreads (B, T, n_spreads), logits (B, T, n_classes) and offset (B, 2)
        for masks of shape (B*T, site_dim), then the deterministic pass's theta (B, n_theta) (eval mode: every
        unit kept), which is the point estimate: it is more accurate than the mean of the T samples."""
        features, offset = self.features(x, noise)
        n_samples = masks[0].shape[0] // features.shape[0]
        repeated = features.repeat_interleave(n_samples, dim=0)
        outputs = self.head(repeated, masks)
        return (*(out.unflatten(0, (-1, n_samples)) for out in outputs), offset, self.head(features)[0])
