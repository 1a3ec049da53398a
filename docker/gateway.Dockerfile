# olss-serve gateway: FastAPI + Redis client only. It copies only the gateway's code (the ground
# floor olss_core, the olss command and app) and installs the locked versions of the project's
# `gateway` extra (requirements/gateway.lock): no torch, no diffusers, no workers or schedules.
#   docker build -f docker/gateway.Dockerfile -t olss-serve-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OLSS_GATEWAY_HOST=0.0.0.0 \
    OLSS_GATEWAY_PORT=8000

WORKDIR /opt/olss
# Dependencies first, so that a code change does not reinstall them; the lock is complete, hence
# --no-deps, and pip check proves the result consistent.
COPY requirements/gateway.lock ./requirements/
RUN pip install --no-deps -r requirements/gateway.lock
COPY pyproject.toml README.md ./
COPY olss_core ./olss_core
COPY olss_cli ./olss_cli
COPY app ./app
RUN pip install --no-deps . \
    && pip check \
    && useradd --system --uid 10001 --no-create-home olss

USER olss
EXPOSE 8000
CMD ["olss", "gateway", "--host", "0.0.0.0", "--port", "8000"]
