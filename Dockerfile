# The cluster image: the official Ray image (Ray 2.60, Python 3.11, CUDA) with Lensing Serve installed.
# Used by cluster/kuberay/rayservice.yaml (and optionally by cluster/aws.yaml instead of its setup_commands).
#
#   docker build -t <registry>/lensing-serve:0.1.0 . && docker push <registry>/lensing-serve:0.1.0
#
# Not built by the tests: the machines that run them have no Docker and no registry access. The -gpu
# variant runs on CPU nodes too, so head and workers share one image (smaller head: rayproject/ray:2.60.0-py311-cpu).
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/lensing-serve

# Dependencies first (a layer that survives code edits): the pinned torch from PyPI is the CUDA build.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p lensing deployments cluster \
    && pip install --no-cache-dir "torch==2.13.0" \
    && pip install --no-cache-dir ".[serve]" && pip uninstall -y lensing-serve

# The project itself (weights and model card ship inside the lensing package), plus the configs.
COPY --chown=ray:users lensing ./lensing
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users serve_config.yaml ./
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import deployments.app, lensing; print('lensing-serve installed')"

# JobStore's SQLite file (configs/serve-gpu.yaml store_path): mount a persistent volume here.
RUN sudo mkdir -p /var/lib/lensing-serve && sudo chown ray:users /var/lib/lensing-serve
