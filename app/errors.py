"""Domain errors of the gateway and the one table that maps them to HTTP status codes.

Every error response is JSON ``{"error": "...", "error_type": "..."}``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from olss_core.keys import InvalidJobId

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the domain errors; ``error_type`` is the machine-readable name."""

    error_type = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    error_type = "validation_error"


class Unauthorized(ServiceError):
    error_type = "unauthorized"


class JobNotFound(ServiceError):
    error_type = "not_found"


class JobFinished(ServiceError):
    """A cancel of a job that already finished."""

    error_type = "job_finished"


class JobFailed(ServiceError):
    """A sync request whose job failed in the worker."""

    error_type = "job_failed"


class JobCanceled(ServiceError):
    error_type = "job_canceled"


class QueueFull(ServiceError):
    error_type = "queue_full"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NoWorker(ServiceError):
    error_type = "no_worker"


class RedisUnavailable(ServiceError):
    error_type = "redis_unavailable"


STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidRequest: 422,
    Unauthorized: 401,
    JobNotFound: 404,
    JobFinished: 409,
    JobCanceled: 409,
    QueueFull: 429,
    JobFailed: 500,
    NoWorker: 503,
    RedisUnavailable: 503,
}


def error_response(error: ServiceError) -> JSONResponse:
    """The JSON response for a domain error, with its status code and headers."""
    headers: dict[str, str] = {}
    if isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": error.message, "error_type": error.error_type},
        status_code=STATUS_CODES.get(type(error), 500),
        headers=headers,
    )


def _describe_validation(error: RequestValidationError, content_type: str) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"] if p != "body") or "body"
        parts.append(f"{field}: {item['msg']}")
        if field == "body" and "json" not in content_type:
            # curl -d sends application/x-www-form-urlencoded unless told otherwise.
            parts[-1] += " (send a JSON object with Content-Type: application/json, got "
            parts[-1] += f"{content_type or 'no Content-Type'})"
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Route domain errors, request-schema errors, HTTP errors and Redis outages to JSON."""

    @app.exception_handler(ServiceError)
    async def _service(_: Request, error: ServiceError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _schema(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        return error_response(InvalidRequest(_describe_validation(error, content_type)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found" if error.status_code == 404 else "http_error"
        return JSONResponse(
            {"error": str(error.detail), "error_type": error_type},
            status_code=error.status_code, headers=getattr(error, "headers", None),
        )

    @app.exception_handler(InvalidJobId)
    async def _bad_id(_: Request, error: InvalidJobId) -> JSONResponse:
        return error_response(JobNotFound(f"no job: {error}"))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis(_: Request, error: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", error)
        return error_response(RedisUnavailable(f"Redis is unavailable: {error}"))
