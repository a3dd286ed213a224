"""MC Dropout cost: vectorised sampling vs the replaced system's loop, and the encoder's GFLOP/s.

Runs as `python bench/mc_dropout.py` from the repository root with the project installed. Compares, on the
shipped weights and on the same maps, at batch 1 and 64:
  * mc_samples = 100 through the Predictor (encoder once, head 100 times in one batched call),
  * mc_samples = 1 through the Predictor (deterministic network),
  * a Python loop of 100 full forward passes with dropout on (the replaced system's way),
and the encoder's achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter) against a large fp32
matmul on the same machine and thread count. Last line: one JSON object with the figures of issue 3.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lensing import MapRequest, generate_map
from lensing.noise import estimate_noise_sigma
from lensing.pinn.predictor import Predictor

REPEATS = 7
MATMUL_SIZE = 2048


def best_time(fn, repeats: int = REPEATS) -> float:
    """Best wall time of `repeats` calls after one warm-up (least disturbed by other processes)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def naive_loop(predictor: Predictor, maps: np.ndarray, n_samples: int) -> None:
    """The replaced system: n_samples full forward passes, dropout switched on, results stacked."""
    model = predictor.model
    with torch.inference_mode():
        x, noise = predictor.network_input(maps, estimate_noise_sigma(maps))  # only the MC strategy differs
        outputs = []
        for _ in range(n_samples):
            features, _ = model.features(x, noise)
            h = F.dropout(features, model.head.p, True)
            h = F.dropout(F.gelu(model.head.hidden(h)), model.head.p, True)
            outputs.append(model.head.out(h))
        torch.stack(outputs).mean(0)


def encoder_gflops(predictor: Predictor, batch: int) -> tuple[float, float]:
    """(GFLOP per call, achieved GFLOP/s) of the encoder at `batch`."""
    model = predictor.model
    x = torch.randn(batch, model.config.in_channels, model.config.input_size, model.config.input_size).contiguous(
        memory_format=torch.channels_last)  # the layout the Predictor runs the network in
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model.encoder(x, x)
        flops = counter.get_total_flops()
        seconds = best_time(lambda: model.encoder(x, x), repeats=15)
    return flops / 1e9, flops / seconds / 1e9


def matmul_gflops() -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    seconds = best_time(lambda: a @ b, repeats=10)
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def main() -> None:
    predictor = Predictor.from_package(device="cpu")
    rows = []
    results = {}
    for batch in (1, 64):
        rng = np.random.default_rng(batch)
        maps = np.stack([
            generate_map(MapRequest(M_vir=10 ** rng.uniform(11, 14), scale_radius=rng.uniform(50, 500))).convergence
            for _ in range(batch)
        ])
        mc100 = best_time(lambda: predictor.predict_batch(maps, mc_samples=100, seed=0))
        mc1 = best_time(lambda: predictor.predict_batch(maps, mc_samples=1))
        loop = best_time(lambda: naive_loop(predictor, maps, 100), repeats=3)
        results[batch] = {"mc100": mc100, "mc1": mc1, "loop": loop}
        rows.append((batch, mc1 * 1e3, mc100 * 1e3, loop * 1e3, mc100 / mc1, loop / mc100))
    gflop, encoder_rate = encoder_gflops(predictor, 64)
    matmul_rate = matmul_gflops()

    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'batch':>5} | {'mc=1 ms':>9} | {'mc=100 ms':>9} | {'loop x100 ms':>12} | "
          f"{'mc100/mc1':>9} | {'loop/mc100':>10}")
    print("-" * 70)
    for batch, t1, t100, tloop, ratio, speedup in rows:
        print(f"{batch:>5} | {t1:>9.2f} | {t100:>9.2f} | {tloop:>12.1f} | {ratio:>9.2f} | {speedup:>10.1f}")
    print(f"\nencoder at batch 64: {gflop:.2f} GFLOP per call, {encoder_rate:.1f} GFLOP/s; "
          f"fp32 matmul {MATMUL_SIZE}^3: {matmul_rate:.1f} GFLOP/s -> {encoder_rate / matmul_rate:.0%}")
    summary = {
        "mc100_over_mc1": round(results[64]["mc100"] / results[64]["mc1"], 3),
        "mc100_over_mc1_batch1": round(results[1]["mc100"] / results[1]["mc1"], 3),
        "speedup_vs_naive_loop": round(results[64]["loop"] / results[64]["mc100"], 2),
        "speedup_vs_naive_loop_batch1": round(results[1]["loop"] / results[1]["mc100"], 2),
        "encoder_fraction_of_matmul": round(encoder_rate / matmul_rate, 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
