# olss-serve worker: one diffusers pipeline on a GPU. Model weights are not baked in: they are
# downloaded on first start into HF_HOME, a mounted volume (see docker-compose.yml).
#
# GPU (default):  docker build -f docker/worker.Dockerfile -t olss-serve-worker:cuda .
# CPU only:       docker build -f docker/worker.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim \
#                     -t olss-serve-worker:cpu .
#
# The base image bundles the torch that requirements/worker.lock pins (the version CI tests;
# tests/deploy/test_lock.py checks the two agree). Its CUDA 12.6 build needs an NVIDIA driver
# that supports CUDA 12 (525 or newer).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# Where torch comes from when the base image has none (the CPU build): the CPU-only wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# PIP_BREAK_SYSTEM_PACKAGES: the PyTorch images install torch into a system Python that is
# marked externally managed (PEP 668); this image is that Python's only user.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    HF_HOME=/var/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    OLSS_SCHEDULE_DIR=/var/lib/olss/schedules \
    OLSS_CACHE_DIR=/var/cache/olss \
    OLSS_WORKER_METRICS_HOST=0.0.0.0 \
    OLSS_WORKER_METRICS_PORT=9400

WORKDIR /opt/olss
# Dependencies first (the locked versions of the base dependencies and the `worker` extra), so
# that a code change does not reinstall them. The base image's torch satisfies the lock's pin and
# is kept; without one, the pinned version's CPU build comes from TORCH_INDEX_URL.
COPY requirements/worker.lock ./requirements/
RUN python3 -c "import torch" 2>/dev/null \
    || python3 -m pip install --index-url "${TORCH_INDEX_URL}" \
        "$(grep -E '^torch==' requirements/worker.lock)"
RUN python3 -m pip install -r requirements/worker.lock
COPY README.md pyproject.toml ./
COPY olss_core ./olss_core
COPY olss_cli ./olss_cli
COPY workers ./workers
COPY schedules ./schedules
# The worker runs as olss (uid 10001), owner of the folders it writes: a new named volume mounted
# there takes that owner. Volumes an older, root image made need a chown once
# (README.md, "Security defaults").
RUN python3 -m pip install --no-deps . \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/olss olss \
    && mkdir -p "${HF_HOME}" "${OLSS_CACHE_DIR}" "${OLSS_SCHEDULE_DIR}" \
    && chown olss:olss "${HF_HOME}" "${OLSS_CACHE_DIR}" "${OLSS_SCHEDULE_DIR}"

USER olss
VOLUME ["/var/cache/huggingface", "/var/cache/olss", "/var/lib/olss/schedules"]
EXPOSE 9400
CMD ["olss", "worker"]
