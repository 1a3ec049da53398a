# olss-serve worker: one diffusers pipeline on a GPU. Model weights are not baked in: they are
# downloaded on first start into HF_HOME, a mounted volume (see docker-compose.yml).
#
# GPU (default):  docker build -f docker/worker.Dockerfile -t olss-serve-worker:cuda .
# CPU only:       docker build -f docker/worker.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim \
#                     -t olss-serve-worker:cpu .
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# Where torch comes from when the base image has none (the CPU build): the CPU-only wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    OLSS_SCHEDULE_DIR=/var/lib/olss/schedules \
    OLSS_CACHE_DIR=/var/cache/olss \
    OLSS_WORKER_METRICS_HOST=0.0.0.0 \
    OLSS_WORKER_METRICS_PORT=9400

RUN python -c "import torch" 2>/dev/null \
    || pip install "torch>=2.1,<3" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/olss
# Dependencies first (the base dependencies and the `worker` extra, read from pyproject.toml) so
# that a code change does not reinstall them; the base image's torch satisfies the extra's torch
# requirement and is kept.
COPY pyproject.toml ./
RUN python -c "import subprocess, sys, tomllib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = project['dependencies'] + project['optional-dependencies']['worker']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"
COPY README.md ./
COPY olss_core ./olss_core
COPY olss_cli ./olss_cli
COPY workers ./workers
COPY schedules ./schedules
RUN pip install --no-deps . \
    && mkdir -p "${HF_HOME}" "${OLSS_CACHE_DIR}" "${OLSS_SCHEDULE_DIR}"

VOLUME ["/var/cache/huggingface", "/var/cache/olss", "/var/lib/olss/schedules"]
EXPOSE 9400
CMD ["olss", "worker"]
