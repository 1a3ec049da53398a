"""``GET /signed/jobs/{id}/images/{n}``: an image by a signed link, without the bearer key.

The links come from ``app.signed_urls`` (OpenAI ``url`` replies, webhook payloads) when the
deployment has API keys; the signature stands in for the key. A wrong or expired signature is a
404, as for an image that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from app.api.deps import BytesRedisDep, RedisDep, SettingsDep
from app.api.routes.jobs import IMAGE_CONTENT, JOB_ERRORS, JobId, get_image
from app.auth import Caller
from app.errors import JobNotFound, error_responses
from app.signed_urls import SIGNED_IMAGE_PATH, UrlSigner

router = APIRouter(tags=["jobs"])
SIGNATURE_PATTERN = r"^[0-9a-f]{64}$"


@router.get(
    SIGNED_IMAGE_PATH,
    operation_id="get_signed_image",
    response_class=Response,
    responses={200: {"content": IMAGE_CONTENT, "description": "the image, in the job's format"},
               **error_responses(*JOB_ERRORS, 406)},
)
async def get_signed_image(
    request: Request,
    job_id: JobId,
    index: Annotated[int, Path(ge=0)],
    expires: Annotated[int, Query(ge=0, description="Unix time the link stops working")],
    signature: Annotated[str, Query(pattern=SIGNATURE_PATTERN, description="HMAC-SHA256")],
    redis: RedisDep,
    redis_bytes: BytesRedisDep,
    settings: SettingsDep,
) -> Response:
    """One image's bytes, as ``GET /jobs/{id}/images/{n}``, for a link signed by this
    deployment."""
    signer = UrlSigner.of(settings)
    if signer is None or not signer.valid(job_id, index, expires, signature):
        raise JobNotFound("no such image link: expired, or not signed by this deployment")
    return await get_image(request, job_id, index, redis, redis_bytes, settings, Caller())
