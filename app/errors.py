"""Domain errors of the gateway and the one table that maps them to HTTP status codes.

Every error response is JSON ``{"error": "...", "error_type": "..."}`` (``ErrorBody``), whether
a route raised a domain error, the request failed its schema, the body was not JSON, or the
HTTP layer refused it (404 route, 405 method, 413 body). ``error_responses`` declares the same
body in the OpenAPI schema for every status a route can answer.

The OpenAI Images API routes (``OPENAI_PATHS``) answer the same errors as OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` (``OpenAIErrorBody``), with OpenAI's status
for an invalid request (400; an unknown model is 404) and ``x-should-retry: false`` where the
``openai`` client's automatic retry would only repeat the failure.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from olss_core.keys import InvalidJobId

log = logging.getLogger(__name__)


FIELD_NAME = re.compile(r"[a-z_][a-z0-9_.]*")


class ErrorBody(BaseModel):
    """Every error response (but the OpenAI routes')."""

    error: str
    error_type: str


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """An error response of the OpenAI routes: OpenAI's error object."""

    error: OpenAIError


class ServiceError(Exception):
    """Base of the domain errors; ``error_type`` is the machine-readable name."""

    error_type = "error"

    def __init__(
        self, message: str, retry_after_s: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.param = param if param is not None else _leading_field(message)

    def renamed(self, names: dict[str, str]) -> ServiceError:
        """The same error naming its field as a protocol does (``names``: ours -> theirs)."""
        param = names.get(self.param or "", self.param)
        message = self.message
        if self.param and param != self.param:
            message = f"{param}{message.removeprefix(self.param)}"
        return type(self)(message, self.retry_after_s, param)


def _leading_field(message: str) -> str | None:
    """The request field a message starts with (``"steps: at most 150"`` -> ``steps``)."""
    name, colon, _ = message.partition(":")
    return name if colon and FIELD_NAME.fullmatch(name) else None


class InvalidJson(ServiceError):
    """The body is not a JSON document (truncated, not UTF-8, nested too deeply)."""

    error_type = "invalid_json"


class BodyTooLarge(ServiceError):
    error_type = "body_too_large"


class InvalidRequest(ServiceError):
    error_type = "validation_error"


class UnknownModel(ServiceError):
    """A request names a model no worker has ever served."""

    error_type = "unknown_model"


class IdempotencyConflict(ServiceError):
    """An Idempotency-Key reused with a different request."""

    error_type = "idempotency_conflict"


class Unauthorized(ServiceError):
    error_type = "unauthorized"


class JobNotFound(ServiceError):
    error_type = "not_found"


class NotAcceptable(ServiceError):
    """No representation the route has is acceptable to the request's ``Accept``."""

    error_type = "not_acceptable"


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


class TooManyStreams(ServiceError):
    """Every event-stream slot of this gateway process is taken (``OLSS_SSE_MAX_STREAMS``)."""

    error_type = "too_many_streams"


class NoWorker(ServiceError):
    """A known model (or the default) has no live worker."""

    error_type = "no_worker"


class Calibrating(ServiceError):
    """Every live worker of the model is calibrating its OLSS schedules at start-up
    (``workers.self_calibration``); ``Retry-After`` is their estimate."""

    error_type = "calibrating"


class RedisUnavailable(ServiceError):
    error_type = "redis_unavailable"


class RedisFull(ServiceError):
    """Redis refuses writes: it reached ``maxmemory`` (compose and Kubernetes run it with
    ``noeviction``, so it never drops a job to make room). Nothing was written; the request can
    be sent again once finished jobs expire or an operator makes room."""

    error_type = "redis_full"


class JobTimeout(ServiceError):
    """A protocol without a 202 (OpenAI, A1111) waited ``OLSS_SYNC_TIMEOUT_S``: the job goes on."""

    error_type = "job_timeout"


STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidJson: 400,
    Unauthorized: 401,
    JobNotFound: 404,
    NotAcceptable: 406,
    BodyTooLarge: 413,
    JobFinished: 409,
    JobCanceled: 409,
    InvalidRequest: 422,
    UnknownModel: 422,
    IdempotencyConflict: 422,
    QueueFull: 429,
    TooManyStreams: 429,
    JobFailed: 500,
    NoWorker: 503,
    Calibrating: 503,
    RedisUnavailable: 503,
    RedisFull: 503,
    JobTimeout: 504,
}
HTTP_ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
}
"""``error_type`` of the errors the HTTP layer raises itself (by status; else ``http_error``)."""

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "the body is not JSON (truncated, not UTF-8, or nested too deeply)",
    401: "missing or wrong API key",
    404: "no such job, image or route (or the job belongs to another API key)",
    406: "no representation acceptable to Accept",
    409: "the job already finished, or was canceled",
    413: "the request body is larger than OLSS_MAX_BODY_BYTES",
    422: "a field outside its limits, an unknown model or a reused Idempotency-Key",
    429: "the queue or the event streams are full: retry after Retry-After seconds",
    500: "the job failed in the worker",
    503: "Redis is unavailable or full, the model has no live worker, or its workers are "
    "calibrating its OLSS schedules (retry after Retry-After seconds)",
    504: "the job is still running after OLSS_SYNC_TIMEOUT_S (GET /jobs/{id} follows it)",
}
REDIS_FULL_RETRY_AFTER_S = 30
"""``Retry-After`` of a 503 for a full Redis: room comes back as finished jobs expire."""

REDIS_STATUSES = (503,)
"""What any route that reads Redis can answer besides its own errors."""


OPENAI_PATHS = ("/v1/images/", "/v1/models")
"""Path prefixes of the OpenAI Images API routes: their errors are ``OpenAIErrorBody``."""
OPENAI_STATUS_CODES: dict[type[ServiceError], int] = {
    **STATUS_CODES, InvalidRequest: 400, IdempotencyConflict: 400, UnknownModel: 404,
}
OPENAI_ERROR_TYPES: dict[int, str] = {401: "authentication_error", 429: "rate_limit_error"}
"""OpenAI's ``error.type`` by status; any other 4xx is ``invalid_request_error``, a 5xx
``server_error``."""
OPENAI_NO_RETRY = (409, 500, 504)
"""Statuses the ``openai`` client retries by itself, which a retry cannot cure here (the job
was canceled, failed after its own retries, or still runs)."""


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def error_responses(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring ``ErrorBody`` (``OpenAIErrorBody`` on the OpenAI
    routes) for each of ``statuses``."""
    model = OpenAIErrorBody if openai else ErrorBody
    return {
        status: {"model": model, "description": ERROR_DESCRIPTIONS[status]}
        for status in sorted(set(statuses))
    }


def _openai_type(status: int) -> str:
    default = "server_error" if status >= 500 else "invalid_request_error"
    return OPENAI_ERROR_TYPES.get(status, default)


def error_response(error: ServiceError, path: str = "") -> JSONResponse:
    """The JSON response for a domain error, with its status code and headers, in the error
    format of the route at ``path``."""
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, BodyTooLarge):
        headers["Connection"] = "close"  # the rest of the body is not read, it is dropped
    if not is_openai_path(path):
        return JSONResponse(
            ErrorBody(error=error.message, error_type=error.error_type).model_dump(),
            status_code=STATUS_CODES.get(type(error), 500),
            headers=headers,
        )
    status = OPENAI_STATUS_CODES.get(type(error), 500)
    return _openai_response(error.message, status, error.error_type, headers, error.param)


def _openai_response(message: str, status: int, code: str, headers: dict[str, str],
                     param: str | None = None) -> JSONResponse:
    if status in OPENAI_NO_RETRY:
        headers["x-should-retry"] = "false"
    body = OpenAIError(message=message, type=_openai_type(status), param=param, code=code)
    return JSONResponse(OpenAIErrorBody(error=body).model_dump(), status_code=status,
                        headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def _describe_validation(error: RequestValidationError, content_type: str) -> ServiceError:
    parts = []
    for item in error.errors():
        if item["type"] == "json_invalid":
            position = item["loc"][-1]
            return InvalidJson(
                f"body: invalid JSON at character {position}: {item['ctx']['error']}"
            )
        field = _field(item["loc"])
        parts.append(f"{field}: {item['msg']}")
        if field == "body" and "json" not in content_type:
            # curl -d sends application/x-www-form-urlencoded unless told otherwise.
            parts[-1] += " (send a JSON object with Content-Type: application/json, got "
            parts[-1] += f"{content_type or 'no Content-Type'})"
    return InvalidRequest("; ".join(parts))


def _unparsable_body(cause: BaseException | None) -> ServiceError | None:
    """FastAPI answers 400 "error parsing the body" for any error reading the body: the cause
    is a domain error (``BodyTooLarge``), or a decoding error to name."""
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, UnicodeDecodeError):
        return InvalidJson(
            f"body: not UTF-8 (byte 0x{cause.object[cause.start]:02x} at {cause.start})"
        )
    if isinstance(cause, RecursionError):
        return InvalidJson("body: JSON nested too deeply")
    if isinstance(cause, ValueError):
        return InvalidJson(f"body: invalid JSON: {cause}")
    return None


def install_error_handlers(app: FastAPI, allowed_methods: Callable[[str], list[str]]) -> None:
    """Route domain errors, request-schema errors, HTTP errors and Redis outages to JSON.

    ``allowed_methods(path)`` lists every method the routes take at a path (a 405's ``Allow``).
    """

    @app.exception_handler(ServiceError)
    async def _service(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _schema(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        return error_response(_describe_validation(error, content_type), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == 400 and (named := _unparsable_body(error.__cause__)):
            return error_response(named, path)
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(path))
        error_type = HTTP_ERROR_TYPES.get(error.status_code, "http_error")
        if is_openai_path(path):
            return _openai_response(str(error.detail), error.status_code, error_type, headers)
        body = ErrorBody(error=str(error.detail), error_type=error_type)
        return JSONResponse(body.model_dump(), status_code=error.status_code, headers=headers)

    @app.exception_handler(InvalidJobId)
    async def _bad_id(request: Request, error: InvalidJobId) -> JSONResponse:
        return error_response(JobNotFound(f"no job: {error}"), request.url.path)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis(request: Request, error: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", error)
        return error_response(RedisUnavailable(f"Redis is unavailable: {error}", retry_after_s=1),
                              request.url.path)

    @app.exception_handler(RedisOutOfMemoryError)
    async def _redis_full(request: Request, error: Exception) -> JSONResponse:
        log.error("redis is full (maxmemory), refusing the request: %s", error)
        full = RedisFull("Redis is out of memory and refuses writes; nothing was queued",
                         retry_after_s=REDIS_FULL_RETRY_AFTER_S)
        return error_response(full, request.url.path)
