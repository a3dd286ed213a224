"""The Predictor: shipped PINN weights -> calibrated predictions for batches of convergence maps.

This is the one inference entry point that the Serve deployment, the sweeps, calibration and
`lensing evaluate` share. It loads verified safetensors weights, runs vectorised MC Dropout (encoder
once, head T times), optionally refines with the physics renderer, applies the model card's calibration
and returns the interval centres and half-widths in the space where errors are measured
(log10 M, log10 r_s, e, centre in kpc: `REPORTED`), from which the physical parameters (M_vir, r_s, c, e,
position angle, centre) and their 68 % / 95 % intervals are derived once.

The network's raw spread of a quantity is sqrt(epistemic^2 + aleatoric^2): the standard deviation of the
MC Dropout samples and the head's learned per-map spread. Every map comes with its per-pixel noise
sigma, given by the caller or estimated from the map (`lensing.noise`); the network reads it.

mc_samples = 1 means the deterministic network (dropout off): a point estimate with no uncertainties
(with refine=True the uncertainties come from the fit's Laplace covariance instead).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cosmology import MapGeometry
from ..halo import r200_from_mass
from ..limits import INFERENCE_NOISE_SIGMA, MC_SAMPLES, InputError, check_integer, check_maps
from ..noise import estimate_noise_sigma
from ..scenarios import CLASS_DESCRIPTIONS, CLASS_NAMES
from .checkpoint import CARD_NAME, PACKAGE_WEIGHTS_DIR, WEIGHTS_NAME, load_weights
from .domain import TrainingDomain
from .encoding import (
    REPORTED,
    ThetaScaler,
    physical_from_theta,
    reported_array,
    reported_std_from_covariance,
    spread_units,
)
from .interval_groups import GROUPS, SUBSTRUCTURE, group_members, mass_bin, noise_bin
from .model import PINN
from .preprocess import noise_at_input, noise_feature, prepare_input
from .refine import refine_theta
from .sampling import sample_theta, summarise
from .symmetries import SYMMETRIES, to_original_frame

__all__ = ["DEVICES", "MapGeometry", "PredictionBatch", "Predictor", "resolve_device"]

# Most maps per network call when a map's symmetric views are stacked: on 2 CPU cores one call of 8 x B
# views beat eight calls of B up to 8 x 16 maps, and lost beyond (mc_samples 10: B = 1 40 -> 19 ms, B = 8
# 142 -> 76 ms, B = 64 830 -> 1100 ms).
VIEW_CALL_MAPS = 128

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# Widest interval half-width of (log10 M_vir, log10 r_s, e) and centre (in units of the field):
# "unconstrained". The Laplace spread of a fit to a map that is no halo can be astronomically wide, and
# calibration multiplies it further (10**half-width overflows); held-out halo maps stay far below it.
UNCONSTRAINED_SPREAD = np.array([3.0, 3.0, 1.0, 0.5, 0.5])
OUTPUT_PARAMETERS = ("M_vir", "r_s", "ellipticity", "position_angle", "concentration", "center_x_kpc",
                     "center_y_kpc")
INTERVAL_PARAMETERS = ("M_vir", "r_s", "ellipticity", "center_x_kpc", "center_y_kpc")  # order matches REPORTED
NOISE_SOURCES = ("given", "estimated")
CALIBRATED_MODES = {  # the ways to run the network that `calibration` fits: predict_batch options
    "network": {"refine": False, "symmetrize": False},
    "refined": {"refine": True, "symmetrize": False},
    "symmetrized": {"refine": False, "symmetrize": True},
}


def resolve_device(requested: str = "auto") -> str:
    """'auto' or 'cuda' -> 'cuda' if torch sees a CUDA device, else 'cpu' (a warning when 'cuda' was asked).

    The one place where the compute device is chosen: the Predictor and the Serve deployment both call it.
    """
    if requested not in DEVICES:
        raise InputError("device", f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        logger.warning("device 'cuda' requested but torch sees no CUDA device; using the CPU")
    return "cpu"


def _check_mc_samples(mc_samples: int) -> int:
    return check_integer("mc_samples", mc_samples, MC_SAMPLES)


@dataclass
class PredictionBatch:
    """Calibrated predictions for B maps.

    `centre`, `half68` and `half95` (B, 3) are the interval centres and half-widths in REPORTED space
    (log10 M_vir, log10 r_s, e, centre): what calibration and evaluation measure. `values` and `uncertainties`
    (arrays of shape (B,)) are the physical parameters and intervals derived from them once.
    """

    centre: np.ndarray
    half68: np.ndarray | None  # None when there are no uncertainties (mc_samples = 1 without refine)
    half95: np.ndarray | None
    values: dict[str, np.ndarray]  # OUTPUT_PARAMETERS
    uncertainties: dict[str, np.ndarray] | None  # *_std, *_p16, *_p84, *_p2_5, *_p97_5
    class_probs: np.ndarray  # (B, C)
    entropy: np.ndarray
    mutual_information: np.ndarray
    noise_sigma: np.ndarray  # (B,) per-pixel sigma the network was given
    noise_estimated: np.ndarray  # (B,) bool: estimated from the map (True) or given by the caller
    outside_training: list[dict[str, str]]  # per map, {name: why} for what lies outside the training maps
    mc_samples: int
    refined: bool
    symmetrized: bool

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per map, in the original specification's response shape."""
        records = []
        for k in range(len(self)):
            probs = self.class_probs[k]
            records.append(
                {
                    "predictions": {name: float(self.values[name][k]) for name in OUTPUT_PARAMETERS},
                    "uncertainties": None
                    if self.uncertainties is None
                    else {name: float(v[k]) for name, v in self.uncertainties.items()},
                    "classification": {name: float(p) for name, p in zip(CLASS_NAMES, probs)},
                    "predicted_class": CLASS_NAMES[int(np.argmax(probs))],
                    "entropy": float(self.entropy[k]),
                    "mutual_information": float(self.mutual_information[k]),
                    "noise_sigma": float(self.noise_sigma[k]),
                    "noise_sigma_source": NOISE_SOURCES[int(self.noise_estimated[k])],
                    "training_domain": {"inside": not self.outside_training[k],
                                        "outside": self.outside_training[k]},
                    "mc_samples": self.mc_samples,
                    "refined": self.refined,
                    "symmetrized": self.symmetrized,
                }
            )
        return records


class Predictor:
    """PINN inference with calibrated MC Dropout and optional physics refinement.

    `card["calibration"]` holds the interval scales; a card without one gives raw spreads (k = 1), which
    is what calibration itself measures.
    """

    def __init__(self, model: PINN, card: dict, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        # channels_last, as in training: oneDNN's convolutions run 10-25 % faster on CPU in this layout
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.card = card
        self.scaler = ThetaScaler(**{k: tuple(v) for k, v in card["theta_scaler"].items()})
        self.calibration = card.get("calibration")
        self._k_tables = _k_tables(self.calibration)
        self.domain = TrainingDomain.from_card(card)

    @classmethod
    def from_files(cls, weights: str | Path, card: str | Path, device: str = "auto") -> Predictor:
        resolved = resolve_device(device)
        model, card_data = load_weights(Path(weights), Path(card), resolved)
        return cls(model, card_data, resolved)

    @classmethod
    def from_package(cls, device: str = "auto") -> Predictor:
        """The weights shipped in lensing/weights (checksum verified)."""
        return cls.from_files(PACKAGE_WEIGHTS_DIR / WEIGHTS_NAME, PACKAGE_WEIGHTS_DIR / CARD_NAME, device)

    def uncalibrated(self) -> Predictor:
        """The same network without calibration: its half-widths are the raw spreads (k = 1)."""
        card = {key: value for key, value in self.card.items() if key != "calibration"}
        return Predictor(self.model, card, self.device)

    def info(self) -> dict:
        size = self.model.config.input_size
        return {
            "name": self.card.get("name", "PINN"),
            "version": self.card.get("version", "0"),
            "description": self.card.get("description", ""),
            "input_size": [size, size],
            "output_parameters": list(OUTPUT_PARAMETERS),
            "class_names": list(CLASS_NAMES),
            "class_descriptions": CLASS_DESCRIPTIONS,
            "calibration": self.calibration,
            "sha256": self.card.get("sha256"),
            "metrics": self.card.get("metrics", {}),
            "training_domain": self.domain.describe(),
            "device": str(self.device),
        }

    def predict_batch(
        self,
        maps,
        geometry: MapGeometry = MapGeometry(),
        mc_samples: int = 50,
        refine: bool = False,
        seed: int | Sequence[int | None] | None = None,
        noise_sigma: float | Sequence[float | None] | None = None,
        symmetrize: bool = False,
    ) -> PredictionBatch:
        """Predict for maps of one size and geometry; `seed` and `noise_sigma` per map (one value: the same
        for all; a None noise_sigma is estimated from its map). `symmetrize`: pool the samples of the map's
        eight turned and mirrored views (`symmetries`), mc_samples each, at eight times the cost."""
        array = check_maps(maps)
        mc_samples = _check_mc_samples(mc_samples)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] * len(array)
        if len(seeds) != len(array):
            raise InputError("seed", f"seed must give one seed per map ({len(array)}), got {len(seeds)}")
        sigma, estimated = _noise_levels(array, noise_sigma)
        size = self.model.config.input_size
        x, noise = self.network_input(array, sigma)
        if symmetrize:  # centre: the mean of the 8 x mc_samples pooled samples, which averages dropout's scatter
            theta, log_spread, logits = self._sample_views(x, noise, mc_samples, seeds)
            point = None
        else:
            theta, log_spread, logits, point = sample_theta(self.model, x, noise, mc_samples, seeds, self.scaler)
        summary = summarise(theta, log_spread, logits, geometry.lens, geometry.fov_kpc, point)
        centre_theta, centre = summary.theta_centre, summary.reported_centre
        spread = np.hypot(summary.reported_std, summary.learned_spread)
        if refine:  # refined centre; its spread is the fit's Laplace standard deviation
            refined, covariance = refine_theta(torch.as_tensor(centre_theta), torch.as_tensor(array))
            centre_theta = refined.numpy()
            centre = reported_array(centre_theta, geometry.lens, geometry.fov_kpc)
            spread = reported_std_from_covariance(centre_theta, covariance.numpy(), geometry.lens, geometry.fov_kpc)
            spread = np.nan_to_num(spread, nan=np.inf)
        half68 = half95 = None
        sigma_at_input = noise_at_input(sigma, array.shape[-1], size)
        if mc_samples > 1 or refine:
            widest = UNCONSTRAINED_SPREAD * spread_units(geometry.fov_kpc)
            scales = self._scales("refined" if refine else "symmetrized" if symmetrize else "network",
                                  sigma_at_input, centre[:, 0], summary.class_probs)
            half68, half95 = (np.minimum(scales[level] * spread, widest) for level in ("68", "95"))
        angle = physical_from_theta(centre_theta, geometry.lens, geometry.fov_kpc)["position_angle"]
        values, uncertainties = _physical(centre, half68, half95, angle, geometry)
        if uncertainties is not None:
            uncertainties["position_angle_std"] = _axis_angle_std(theta)
        return PredictionBatch(
            centre=centre,
            half68=half68,
            half95=half95,
            values=values,
            uncertainties=uncertainties,
            class_probs=summary.class_probs,
            entropy=summary.entropy,
            mutual_information=summary.mutual_information,
            noise_sigma=sigma,
            noise_estimated=estimated,
            outside_training=self.domain.outside(centre_theta, geometry.fov_kpc, sigma_at_input),
            mc_samples=mc_samples,
            refined=bool(refine),
            symmetrized=bool(symmetrize),
        )

    def network_input(self, maps: np.ndarray, sigma: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input (B, C, S, S) for maps (B, N, N), in its layout (channels_last, as in training:
        oneDNN's CPU convolutions are faster there) on its device, and the noise feature (B, 1) for per-map
        sigma."""
        size = self.model.config.input_size
        x = prepare_input(torch.as_tensor(maps, dtype=torch.float32), size)
        noise = noise_feature(torch.as_tensor(sigma), maps.shape[-1], size)
        return x.to(self.device, memory_format=torch.channels_last), noise.to(self.device)

    def _sample_views(self, x: torch.Tensor, noise: torch.Tensor, mc_samples: int, seeds: list[int | None]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MC samples of every symmetric view of each map, back in the map's frame and pooled (B, 8T, ...);
        view v of a map draws its dropout masks from seed * 8 + v. Views share a network call up to
        VIEW_CALL_MAPS maps (a lone map: one call of 8 maps instead of eight of 1)."""
        views, per_call = len(SYMMETRIES), max(1, VIEW_CALL_MAPS // len(x))
        parts = []
        for first in range(0, views, per_call):
            chunk = SYMMETRIES[first : first + per_call]
            chunk_seeds = [None if s is None else s * views + v
                           for v in range(first, first + len(chunk)) for s in seeds]
            samples = sample_theta(self.model, torch.cat([symmetry.apply(x) for symmetry in chunk]),
                                   noise.repeat(len(chunk), 1), mc_samples, chunk_seeds, self.scaler)
            theta, log_spread, logits = (out.unflatten(0, (len(chunk), -1)) for out in samples[:3])  # (views, B, T..)
            parts += [(*to_original_frame(theta[k], log_spread[k], symmetry), logits[k])
                      for k, symmetry in enumerate(chunk)]
        theta, log_spread, logits = (torch.cat(part, dim=1) for part in zip(*parts, strict=True))
        return theta, log_spread, logits

    def _scales(self, mode: str, sigma_at_input: np.ndarray, log10_mass: np.ndarray, class_probs: np.ndarray
                ) -> dict[str, np.ndarray]:
        """{level: calibration factors k (B, one per REPORTED quantity)} of a mode (network, refined,
        symmetrized), each map's from its cell (`interval_groups`: noise bin, bin of the estimated log10 M_vir,
        group of the reported class); ones without calibration."""
        if not self.calibration:
            return {level: np.ones((len(sigma_at_input), len(REPORTED))) for level in ("68", "95")}
        if mode not in self._k_tables:
            raise InputError("symmetrize", f"this model's card has no calibration for the {mode} mode: "
                                           "refit it with `lensing calibrate`")
        noise = noise_bin(sigma_at_input, self.calibration["noise_bin_edges"])
        mass = mass_bin(log10_mass, self.calibration["mass_bin_edges"])
        members = group_members(class_probs)
        scales = {}
        for level, by_group in self._k_tables[mode].items():
            scales[level] = np.empty((len(noise), len(REPORTED)))
            for group, chosen in members.items():
                scales[level][chosen] = by_group[group][:, noise[chosen], mass[chosen]].T
        return scales

    def predict(
        self,
        maps: Sequence[np.ndarray],
        geometries: Sequence[MapGeometry] | MapGeometry | None = None,
        mc_samples: int | Sequence[int] = 50,
        refine: bool | Sequence[bool] = False,
        seed: int | Sequence[int | None] | None = None,
        max_mc_work: int | None = None,
        noise_sigma: float | Sequence[float | None] | None = None,
        symmetrize: bool | Sequence[bool] = False,
    ) -> list[dict]:
        """Mixed requests: maps of any sizes, each with its own geometry, mc_samples, refine, symmetrize, seed
        and noise.

        Maps that share (size, geometry, mc_samples, refine, symmetrize) run together; `max_mc_work` bounds
        maps x mc_samples (x 8 views when symmetrized) per vectorised chunk. A map's result never depends on
        its batch neighbours.
        """
        n = len(maps)

        def per_map(value, default) -> list:
            if isinstance(value, Sequence) and not isinstance(value, str):
                return list(value)
            return [default if value is None else value] * n

        geometries = per_map(geometries, MapGeometry())
        mc = per_map(mc_samples, 50)
        refines = per_map(refine, False)
        symmetrizes = per_map(symmetrize, False)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] * n
        noises = list(noise_sigma) if isinstance(noise_sigma, Sequence) else [noise_sigma] * n
        for name, values in (("geometries", geometries), ("mc_samples", mc), ("refine", refines),
                             ("symmetrize", symmetrizes), ("seed", seeds), ("noise_sigma", noises)):
            if len(values) != n:
                raise InputError(name, f"{name} must give one value per map ({n}), got {len(values)}")
        arrays = [check_maps(m)[0] for m in maps]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for k, array in enumerate(arrays):
            groups[(array.shape[-1], geometries[k], _check_mc_samples(mc[k]), bool(refines[k]),
                    bool(symmetrizes[k]))].append(k)
        results: list[dict | None] = [None] * n
        for (_, geometry, samples, do_refine, do_symmetrize), indices in groups.items():
            work = samples * (len(SYMMETRIES) if do_symmetrize else 1)  # network passes per map
            chunk = max(1, (max_mc_work or len(indices) * work) // work)
            for start in range(0, len(indices), chunk):
                part = indices[start : start + chunk]
                batch = self.predict_batch(
                    np.stack([arrays[k] for k in part]), geometry, samples, do_refine, [seeds[k] for k in part],
                    [noises[k] for k in part], do_symmetrize,
                )
                for k, record in zip(part, batch.to_records()):
                    numbers = [*record["predictions"].values(), *(record["uncertainties"] or {}).values()]
                    if not np.isfinite(numbers).all():  # a map far from any halo the model can describe
                        raise InputError("convergence_map",
                                         f"convergence_map {k}: the model's estimate is not finite for this map")
                    results[k] = record
        return results  # type: ignore[return-value]


def _physical(centre: np.ndarray, half68: np.ndarray | None, half95: np.ndarray | None, angle: np.ndarray,
              geometry: MapGeometry) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Physical values and intervals from centres and half-widths in REPORTED space (the one conversion)."""
    log_mass, log_rs, ellipticity = centre[:, 0], centre[:, 1], centre[:, 2]
    mass, r_s = 10.0**log_mass, 10.0**log_rs
    values = {
        "M_vir": mass,
        "r_s": r_s,
        "ellipticity": ellipticity,
        "position_angle": angle,
        "concentration": r200_from_mass(mass, geometry.lens.rho_crit) / r_s,
        "center_x_kpc": centre[:, 3],
        "center_y_kpc": centre[:, 4],
    }
    if half68 is None or half95 is None:
        return values, None
    uncertainties: dict[str, np.ndarray] = {}
    for i, name in enumerate(INTERVAL_PARAMETERS):
        if name.startswith("center"):
            to_physical, std = (lambda v: v), half68[:, i]
        elif name == "ellipticity":
            to_physical, std = (lambda v: np.clip(v, 0.0, None)), half68[:, i]
        else:
            to_physical, std = (lambda v: 10.0**v), values[name] * math.log(10.0) * half68[:, i]
        uncertainties[f"{name}_std"] = std
        uncertainties[f"{name}_p16"] = to_physical(centre[:, i] - half68[:, i])
        uncertainties[f"{name}_p84"] = to_physical(centre[:, i] + half68[:, i])
        uncertainties[f"{name}_p2_5"] = to_physical(centre[:, i] - half95[:, i])
        uncertainties[f"{name}_p97_5"] = to_physical(centre[:, i] + half95[:, i])
    return values, uncertainties


def _k_tables(calibration: dict | None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{mode: {level: {group: k array (REPORTED, noise bins, mass bins)}}} of a card's calibration, read once
    rather than on every predict call (the card stores them as nested lists per quantity), with a table for
    every group of `GROUPS`: a card from before 2.6.0 has no "cored" group, and its SIDM maps were in
    "substructure", so they take that group's k."""
    return {mode: {level: {group: np.array([by_group.get(group, by_group[SUBSTRUCTURE])[name] for name in REPORTED])
                           for group in GROUPS}
                   for level, by_group in calibration[mode].items()}
            for mode in CALIBRATED_MODES if calibration and mode in calibration}


def _noise_levels(maps: np.ndarray, noise_sigma: float | Sequence[float | None] | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-map noise sigma (B,) and whether each was estimated: a given value is checked, None estimated."""
    given = list(noise_sigma) if isinstance(noise_sigma, Sequence) else [noise_sigma] * len(maps)
    if len(given) != len(maps):
        raise InputError("noise_sigma", f"noise_sigma must give one value per map ({len(maps)}), got {len(given)}")
    estimated = np.array([value is None for value in given])
    sigma = np.zeros(len(maps))
    if estimated.any():
        sigma[estimated] = estimate_noise_sigma(maps[estimated])
    for k in np.flatnonzero(~estimated):
        sigma[k] = INFERENCE_NOISE_SIGMA.check("noise_sigma", given[k])
    return sigma, estimated


def _axis_angle_std(theta: torch.Tensor) -> np.ndarray:
    """Circular standard deviation (degrees) of the axis angle over the MC samples (uncalibrated)."""
    samples = theta.double().cpu().numpy()
    doubled = np.arctan2(samples[..., 3], samples[..., 2])
    resultant = np.hypot(np.cos(doubled).mean(axis=1), np.sin(doubled).mean(axis=1))
    return np.degrees(np.sqrt(-2.0 * np.log(np.clip(resultant, 1e-12, 1.0)))) / 2.0
