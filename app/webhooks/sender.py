"""One signed attempt at a webhook: resolve and check the target, POST, follow redirects.

Signed as Standard Webhooks (standardwebhooks.com, by the ``standardwebhooks`` package):
``webhook-id`` (the message id, the same on every attempt), ``webhook-timestamp`` (this
attempt's Unix time) and ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of
``id.timestamp.body`` under ``OLSS_WEBHOOK_SECRET``. A 2xx answer is a delivery; another
status, a timeout, a failed lookup or connection is a failure the dispatcher retries; a target
the guard refuses (``app.webhooks.targets``) is never contacted and not retried. Redirects are
followed by hand, at most ``MAX_REDIRECTS``, each target checked again; the client ignores the
environment's proxy settings, which would connect somewhere the guard never checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from app.webhooks.targets import TargetGuard, TargetRefused, TargetUnresolved
from olss_core import __version__

MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended: delivered, refused by the guard, or failed (``error``)."""

    delivered: bool
    refused: bool = False
    error: str | None = None


class WebhookSender:
    """Signs with ``secret`` (``whsec_...``), checks targets with ``guard``."""

    def __init__(self, secret: str, guard: TargetGuard, timeout_s: float) -> None:
        self._signer = Webhook(secret)
        self._guard = guard
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False,
                                         trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def headers(self, message_id: str, body: str, at: datetime) -> dict[str, str]:
        """The Standard Webhooks headers of ``body`` sent at ``at``."""
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self._signer.sign(message_id, at, body),
            "content-type": "application/json",
            "user-agent": f"olss-serve/{__version__}",
        }

    async def send(self, url: str, message_id: str, body: str) -> Attempt:
        """POST ``body`` to ``url``, signed, following redirects (see the module docstring)."""
        headers = self.headers(message_id, body, datetime.now(UTC))
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            port = target.port or DEFAULT_PORTS.get(target.scheme, 80)
            try:
                address = await self._guard.resolve(target.host, port)
            except TargetRefused as error:
                return Attempt(delivered=False, refused=True, error=str(error))
            except TargetUnresolved as error:
                return Attempt(delivered=False, error=str(error))
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            try:
                response = await self._client.post(
                    target.copy_with(host=str(address)), content=body.encode(),
                    headers={**headers, "host": target.netloc.decode()}, extensions=extensions,
                )
            except httpx.HTTPError as error:
                return Attempt(delivered=False, error=f"{type(error).__name__}: {error}")
            if response.is_redirect and "location" in response.headers:
                target = target.join(response.headers["location"])
                continue
            if response.is_success:
                return Attempt(delivered=True)
            return Attempt(delivered=False, error=f"HTTP {response.status_code} from {url}")
        return Attempt(delivered=False, error=f"more than {MAX_REDIRECTS} redirects from {url}")
