# olss-serve gateway: FastAPI + Redis client only. No torch, no diffusers: the project is
# installed without its dependencies, then only the gateway's (docker/gateway-requirements.txt).
#   docker build -f docker/gateway.Dockerfile -t olss-serve-gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OLSS_GATEWAY_HOST=0.0.0.0 \
    OLSS_GATEWAY_PORT=8000

WORKDIR /opt/olss
COPY docker/gateway-requirements.txt ./
RUN pip install -r gateway-requirements.txt

COPY pyproject.toml README.md ./
COPY app ./app
COPY schedules ./schedules
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home olss

USER olss
EXPOSE 8000
CMD ["olss", "gateway", "--host", "0.0.0.0", "--port", "8000"]
