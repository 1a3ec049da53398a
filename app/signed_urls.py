"""Absolute links to a job's images, signed when the gateway needs a key (``OLSS_API_KEYS``).

An OpenAI ``url`` reply and a webhook's payload hand out image links that a client opens
without its bearer key (a browser, an ``<img>`` tag, a webhook receiver). Without keys the link
is the job's own ``GET /jobs/{id}/images/{n}``. With keys it is ``GET /signed/jobs/{id}/images/
{n}?expires=..&signature=..``: HMAC-SHA256 (RFC 2104) of the job id, the index and the expiry
time under ``OLSS_URL_SIGNING_SECRET`` (default: a digest of the API keys, so every gateway of
a deployment signs alike); it stops working when the image expires.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from olss_core.protocol import now
from olss_core.settings import Settings

SIGNED_IMAGE_PATH = "/signed/jobs/{job_id}/images/{index}"
DERIVED_KEY_LABEL = b"olss-serve signed image urls\n"


@dataclass(frozen=True)
class UrlSigner:
    """Signs and checks image links with one key."""

    key: bytes

    @classmethod
    def of(cls, settings: Settings) -> UrlSigner | None:
        """The deployment's signer; ``None`` without API keys (links need no signature)."""
        if not settings.api_keys:
            return None
        if settings.url_signing_secret is not None:
            return cls(settings.url_signing_secret.get_secret_value().encode())
        keys = "\n".join(sorted(settings.api_keys)).encode()
        return cls(hashlib.sha256(DERIVED_KEY_LABEL + keys).digest())

    def signature(self, job_id: str, index: int, expires: int) -> str:
        message = f"{job_id}\n{index}\n{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def valid(self, job_id: str, index: int, expires: int, signature: str) -> bool:
        """The signature is this signer's for the link, and the link has not expired."""
        expected = self.signature(job_id, index, expires)
        return expires >= now() and hmac.compare_digest(expected, signature)


def image_url(base_url: str, job_id: str, index: int, settings: Settings) -> str:
    """An absolute link to image ``index`` of ``job_id`` under ``base_url`` (signed with keys),
    valid as long as a finished job's images are kept."""
    base = base_url.rstrip("/")
    signer = UrlSigner.of(settings)
    if signer is None:
        return f"{base}/jobs/{job_id}/images/{index}"
    expires = int(now()) + settings.finished_image_ttl_s
    path = SIGNED_IMAGE_PATH.format(job_id=job_id, index=index)
    return f"{base}{path}?expires={expires}&signature={signer.signature(job_id, index, expires)}"
