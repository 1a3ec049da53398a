# olss-serve gateway: FastAPI + Redis client only. It copies only the gateway's code (the ground
# floor olss_core, the olss command and app) and installs the project's `gateway` extra: no torch,
# no diffusers, no workers or schedules packages.
#   docker build -f docker/gateway.Dockerfile -t olss-serve-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OLSS_GATEWAY_HOST=0.0.0.0 \
    OLSS_GATEWAY_PORT=8000

WORKDIR /opt/olss
COPY pyproject.toml README.md ./
COPY olss_core ./olss_core
COPY olss_cli ./olss_cli
COPY app ./app
RUN pip install ".[gateway]" \
    && useradd --system --uid 10001 --no-create-home olss

USER olss
EXPOSE 8000
CMD ["olss", "gateway", "--host", "0.0.0.0", "--port", "8000"]
