"""The webhook SSRF guard and one signed attempt, against a real loopback receiver: every
address a host resolves to is checked, private ones are refused unless allowed, redirects are
checked hop by hop, and the signature is the one ``standardwebhooks`` verifies."""

from __future__ import annotations

import asyncio
import base64
import ipaddress

import pytest
from standardwebhooks import Webhook

from app.webhooks.sender import Attempt, WebhookSender
from app.webhooks.targets import TargetGuard, TargetRefused
from tests.protocols.webhook_receiver import receiver

SECRET = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes!!!!").decode()
LOOPBACK = TargetGuard((ipaddress.ip_network("127.0.0.0/8"),))


def attempt(url: str, body: str = "{}", message_id: str = "msg_1") -> Attempt:
    """One ``WebhookSender.send`` allowed to loopback."""

    async def send() -> Attempt:
        sender = WebhookSender(SECRET, LOOPBACK, timeout_s=5)
        try:
            return await sender.send(url, message_id, body)
        finally:
            await sender.aclose()

    return asyncio.run(send())


@pytest.mark.parametrize("host", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "::1", "[::1]", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
    "localhost", "LOCALHOST",
])
def test_private_loopback_and_link_local_literals_are_refused(host: str) -> None:
    with pytest.raises(TargetRefused, match="not a public address"):
        TargetGuard().check_literal(host)


@pytest.mark.parametrize("host", ["8.8.8.8", "2001:4860:4860::8888", "hooks.example.com"])
def test_public_literals_and_names_pass_the_edge_check(host: str) -> None:
    TargetGuard().check_literal(host)  # names are resolved and checked at delivery


def test_the_allowlist_permits_its_networks_only() -> None:
    LOOPBACK.check_literal("127.0.0.9")
    with pytest.raises(TargetRefused):
        LOOPBACK.check_literal("10.0.0.1")


def test_a_name_is_checked_by_every_address_it_resolves_to() -> None:
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1"):
        asyncio.run(TargetGuard().resolve("localhost", 80))
    address = asyncio.run(TargetGuard((ipaddress.ip_network("127.0.0.0/8"),
                                       ipaddress.ip_network("::1/128"))).resolve("localhost", 80))
    assert address.is_loopback


def test_one_attempt_is_signed_as_standard_webhooks() -> None:
    with receiver() as hooks:
        result = attempt(hooks.url, '{"type": "job.completed"}')
    assert result.delivered and result.error is None
    (got,) = hooks.requests
    assert got.headers["webhook-id"] == "msg_1"
    assert Webhook(SECRET).verify(got.body, got.headers) == {"type": "job.completed"}


def test_a_redirect_to_a_private_address_is_refused_unsent() -> None:
    with receiver(redirect_to="http://169.254.169.254/latest/meta-data") as hooks:
        result = attempt(hooks.url)
    assert result.refused and not result.delivered
    assert "169.254.169.254" in (result.error or "")
    assert len(hooks.requests) == 1  # only the first hop was contacted


def test_an_error_status_is_a_failure_to_retry() -> None:
    with receiver(script=[502]) as hooks:
        result = attempt(hooks.url)
    assert not result.delivered and not result.refused
    assert result.error == f"HTTP 502 from {hooks.url}"
