"""Baselines (a) and (b) of bench/http_load.py: one single-process FastAPI service built the replaced system's way.

Same endpoints, payloads and model as the Ray Serve app, JSON only, request models with nested lists,
responses through FastAPI's default encoder. `BASELINE_MODE` picks the inference path:
  loop        (a) MC Dropout as a Python loop of T full forward passes with dropout on (the original design)
  vectorised  (b) our Predictor: encoder once, T head samples in one batched pass
Run: BASELINE_MODE=loop python -m uvicorn bench.fastapi_baseline:app --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel

from lensing.noise import estimate_noise_sigma
from lensing.pinn.encoding import with_offset
from lensing.pinn.predictor import MapGeometry, Predictor
from lensing.pinn.preprocess import noise_feature, prepare_input
from lensing.pinn.sampling import summarise
from lensing.synthetic import MapRequest, generate_map

MODE = os.environ.get("BASELINE_MODE", "loop")
torch.set_num_threads(int(os.environ.get("BASELINE_TORCH_THREADS", "1")))  # as the Serve replica
WEIGHTS = os.environ.get("BASELINE_WEIGHTS")  # a directory with pinn.safetensors + pinn_card.json; default: shipped
predictor = (Predictor.from_files(f"{WEIGHTS}/pinn.safetensors", f"{WEIGHTS}/pinn_card.json", device="cpu") if WEIGHTS
             else Predictor.from_package(device="cpu"))
app = FastAPI(title=f"baseline ({MODE})")


class SyntheticRequest(BaseModel):
    profile_type: str = "NFW"
    mass: float = 2e12
    scale_radius: float = 200.0
    ellipticity: float = 0.0
    grid_size: int = 64


class InferenceRequest(BaseModel):
    convergence_map: list[list[float]]
    target_size: int = 64
    mc_samples: int = 10


def timestamp() -> str:
    return datetime.now(UTC).isoformat()


@app.post("/api/v1/synthetic")
def synthetic(request: SyntheticRequest) -> dict:
    smap = generate_map(MapRequest(profile_type=request.profile_type, M_vir=request.mass,
                                   scale_radius=request.scale_radius, ellipticity=request.ellipticity,
                                   grid_size=request.grid_size))
    return {"job_id": str(uuid.uuid4()), "convergence_map": smap.convergence.tolist(),
            "coordinates": {"X": smap.x_kpc.tolist(), "Y": smap.y_kpc.tolist()},
            "metadata": {k: v for k, v in smap.metadata().items() if k != "request"}, "timestamp": timestamp()}


def loop_inference(kappa: np.ndarray, mc_samples: int) -> dict:
    """The original design: T forward passes in a Python loop, dropout switched on in the head."""
    model = predictor.model
    size = model.config.input_size
    x = prepare_input(torch.as_tensor(kappa[None], dtype=torch.float32), size)
    noise = noise_feature(torch.as_tensor(estimate_noise_sigma(kappa)), kappa.shape[-1], size)
    model.eval()
    model.head.train()
    try:
        with torch.no_grad():
            passes = [model(x, noise) for _ in range(mc_samples)]
    finally:
        model.head.eval()
    theta_z, log_spread, logits = (torch.stack([p[k] for p in passes], dim=1) for k in range(3))
    theta = with_offset(predictor.scaler.unstandardise(theta_z), passes[0][3])
    geometry = MapGeometry()
    summary = summarise(theta, log_spread, logits, geometry.lens, geometry.fov_kpc)
    log_mass, log_rs, ellipticity = summary.reported_centre[0, :3]
    std = summary.reported_std[0]
    return {
        "predictions": {"M_vir": 10**log_mass, "r_s": 10**log_rs, "ellipticity": ellipticity},
        "uncertainties": {"M_vir_std": 10**log_mass * np.log(10) * std[0], "r_s_std": 10**log_rs * np.log(10) * std[1],
                          "ellipticity_std": std[2]},
        "classification": {f"class_{k}": p for k, p in enumerate(summary.class_probs[0])},
        "entropy": summary.entropy[0],
    }


@app.post("/api/v1/inference")
def inference(request: InferenceRequest) -> dict:
    kappa = np.array(request.convergence_map, dtype=np.float64)
    if MODE == "loop":
        result = loop_inference(kappa, request.mc_samples)
    else:
        result = predictor.predict([kappa], mc_samples=request.mc_samples)[0]
    return {"job_id": str(uuid.uuid4()), **{k: v for k, v in result.items()}, "timestamp": timestamp()}
