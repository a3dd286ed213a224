"""`lensing train`: physics-informed training on maps generated on the fly.

Loss = MSE on standardised theta + physics_weight * misfit between the input map and the map the
differentiable renderer draws from the predicted theta (in the normalised input space)
+ classification_weight * cross-entropy over the classes (a smooth map's class is "none")
+ spread_weight * Gaussian negative log-likelihood of the estimate's error (detached) under the learned
per-map spreads, in the reported quantities.
One YAML config (`configs/train/pinn.yaml`) holds every knob; checkpoints allow resume, `init_from`
fine-tunes from existing weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from ..arguments import at_least, invoked_command
from .calibration import fit_calibration
from .checkpoint import (
    CARD_NAME,
    PACKAGE_WEIGHTS_DIR,
    WEIGHTS_NAME,
    export_weights,
    load_pretrained,
    load_training_checkpoint,
    read_card,
    save_training_checkpoint,
)
from .data import DataRecipe, make_batch
from .encoding import ThetaScaler, reported_array, spread_units, with_offset
from .model import PINN, PINNConfig
from .physics import render_theta
from .predictor import Predictor
from .preprocess import noise_feature, normalise, prepare_input


class TrainConfig(BaseModel):
    """Every training knob, validated; loaded from YAML."""

    model_config = ConfigDict(extra="forbid")

    version: str = "1.0.0"
    seed: int = 1
    steps: int = Field(12000, ge=1)
    batch_size: int = Field(128, ge=2)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(300, ge=0)
    physics_weight: float = Field(0.1, ge=0)
    physics_maps: int = Field(32, ge=1)
    classification_weight: float = Field(0.5, ge=0)
    spread_weight: float = Field(0.2, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    validation_maps: int = Field(12_000, ge=100)  # calibration of the network's intervals
    refined_validation_maps: int = Field(3000, ge=100)  # the first of them also calibrate refinement (costly)
    threads: int = Field(2, ge=1)
    init_from: str | None = None
    architecture: dict = Field(default_factory=dict)
    data: dict = Field(default_factory=dict)

    def pinn_config(self) -> PINNConfig:
        return PINNConfig.from_dict(PINNConfig().to_dict() | self.architecture)

    def recipe(self) -> DataRecipe:
        return DataRecipe.from_dict(self.data)


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return TrainConfig(**(data | (overrides or {})))


def training_loss(model: PINN, batch, scaler: ThetaScaler, config: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Supervised + physics + classification + spread loss of one batch, with its parts for logging."""
    size, side = model.config.input_size, batch.maps.shape[-1]
    x = prepare_input(batch.maps, size).contiguous(memory_format=torch.channels_last)
    noise = noise_feature(torch.as_tensor(batch.told_noise_sigma), side, size)
    theta_z, log_spread, logits, offset = model(x, noise)
    relative_truth = torch.cat([batch.theta[:, :4], batch.theta[:, 4:] - offset], dim=1)
    target = scaler.standardise(relative_truth)
    # the centre's residual is Huber: where noise hides the halo, the locator's peak is noise, and those few
    # large residuals must not drown the other maps' gradients
    supervised = (F.mse_loss(theta_z[:, :4], target[:, :4]) * 4
                  + F.smooth_l1_loss(theta_z[:, 4:], target[:, 4:], beta=1.0) * 2) / 6
    theta = with_offset(scaler.unstandardise(theta_z), offset)
    subset = slice(0, config.physics_maps)  # the renderer's backward pass is costly: a subset suffices
    physics = F.mse_loss(normalise(render_theta(theta[subset], side)), normalise(batch.maps[subset]))
    classification = F.cross_entropy(logits, batch.scenario)
    geometry, fov = batch.geometries[0], float(batch.fov_kpc[0])  # one geometry per batch
    units = torch.as_tensor(spread_units(fov), dtype=theta.dtype)
    error = (reported_array(theta.detach(), geometry, fov) - reported_array(batch.theta, geometry, fov)) / units
    spread = (log_spread + 0.5 * (error * torch.exp(-log_spread)) ** 2).mean()
    loss = (supervised + config.physics_weight * physics + config.classification_weight * classification
            + config.spread_weight * spread)
    parts = {"sup": supervised.item(), "phys": physics.item(), "cls": classification.item(), "nll": spread.item()}
    return loss, parts


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(config: TrainConfig, output: Path, resume: bool = True, command: str = "") -> dict:
    """Train, checkpoint, calibrate on a validation seed and export weights + card into `output`."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    output.mkdir(parents=True, exist_ok=True)
    scaler = ThetaScaler()
    recipe = config.recipe()
    model = PINN(config.pinn_config())
    initialised_from = None
    if config.init_from:
        directory = Path(config.init_from)
        load_pretrained(model, directory / WEIGHTS_NAME, directory / CARD_NAME)
        initialised_from = _provenance(read_card(directory / CARD_NAME))
    # channels_last: oneDNN's convolution backward is ~30 % faster per step on CPU in this layout
    model = model.to(memory_format=torch.channels_last).train()  # type: ignore[call-overload]  # torch's stubs omit it
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    checkpoint_path = output / "checkpoint.pt"
    start = 0
    if resume and checkpoint_path.exists():
        state = load_training_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    history_path = output / "history.jsonl"
    started = time.time()
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train", mininterval=5)
    for step in progress:
        batch = make_batch(config.batch_size, np.random.default_rng([config.seed, step]), recipe)
        loss, parts = training_loss(model, batch, scaler, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.4f}" for k, v in parts.items()})
        if (step + 1) % config.log_every == 0:
            with open(history_path, "a") as handle:
                handle.write(json.dumps({"step": step + 1, "loss": loss.item(), **parts}) + "\n")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_training_checkpoint(checkpoint_path, model, optimizer, scheduler, step + 1, {"seed": config.seed})
    model.eval()
    predictor = Predictor(model, {"theta_scaler": {"mean": scaler.mean, "scale": scaler.scale}})
    calibration = fit_calibration(predictor, recipe, n_maps=config.validation_maps, seed=config.seed + 10_000,
                                  refined_maps=config.refined_validation_maps)
    card = {
        "name": "PINN",
        "version": config.version,
        "description": "Physics-informed CNN for NFW host parameters and dark-matter scenario"
        + (" (with a substructure branch)" if model.config.detail_widths else "") + ", MC Dropout head.",
        "training_command": command,
        "training_config": config.model_dump(),
        "data_recipe": recipe.__dict__,
        "seed": config.seed,
        "training_seconds_this_run": round(time.time() - started, 1),
        "initialised_from": initialised_from,
        "theta_scaler": {"mean": scaler.mean, "scale": scaler.scale},
        "calibration": calibration,
    }
    return export_weights(model, card, output)


def _provenance(card: dict) -> dict:
    """What a fine-tune started from: the source card's identity, command and cost (and its own source)."""
    keys = ("name", "version", "sha256", "training_command", "training_seconds_this_run", "initialised_from")
    return {key: card.get(key) for key in keys}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the PINN (data generated on the fly)")
    parser.add_argument("--config", default="configs/train/pinn.yaml", help="training YAML config")
    parser.add_argument("--output", default="runs/pinn", help="run directory (checkpoints, weights, card)")
    parser.add_argument("--steps", type=at_least(1, "optimiser steps"), help="override the number of steps")
    parser.add_argument("--init-from", help="directory with pinn.safetensors + pinn_card.json to fine-tune from")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --output")
    parser.add_argument("--install", action="store_true", help=f"copy the result into {PACKAGE_WEIGHTS_DIR}")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"steps": args.steps, "init_from": args.init_from}.items() if v is not None}
    config = load_config(args.config, overrides)
    output = Path(args.output)
    command = invoked_command()
    card = train(config, output, resume=not args.no_resume, command=command)
    if args.install:
        export_weights_dir = PACKAGE_WEIGHTS_DIR
        export_weights_dir.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_NAME, CARD_NAME, "pinn_card.md"):
            (export_weights_dir / name).write_bytes((output / name).read_bytes())
    print(json.dumps({"output": str(output), "sha256": card["sha256"], "calibration": card["calibration"]}))
    return 0
