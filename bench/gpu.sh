#!/usr/bin/env bash
# GPU check of Lensing Serve, prepared for a machine with an NVIDIA GPU and the project installed
# (`pip install -e '.[serve]'` with a CUDA build of torch; Ray 2.60). From the repository root:
#   bash bench/gpu.sh            # at most ~8 minutes; the last line is one JSON object
# It starts a private Ray head that sees the GPU, then
#   1. the PINN pool alone (configs/serve-gpu.yaml's PINNPredictor, 0.25 GPU a replica) with 1 and then
#      4 replicas, driven through a DeploymentHandle with 64-map stacks: predictor maps/s;
#   2. the whole app of configs/serve-gpu.yaml (keys required: a test key is set; the store is a
#      temporary SQLite file): bulk HTTP inference of 64-map npy stacks at concurrency 8: maps/s;
# and stops everything it started. JSON keys: gpu, pool_maps_per_s_1_replica, pool_maps_per_s_4_replicas,
# pool_scaling_4_over_1, bulk_http_maps_per_s, bulk_http_fraction_of_pool.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "bench/gpu.sh: no nvidia-smi: this machine has no NVIDIA GPU" >&2; exit 2; }
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec timeout 480 "$PYTHON" -m bench.gpu "$@"
