"""Which webhook URLs the gateway may call, and the webhook a request registers.

A server that POSTs to URLs its clients name must not be turned against the network it runs in
(server-side request forgery, OWASP's SSRF prevention cheat sheet). So by default a webhook
goes only to public addresses: not private (RFC 1918, RFC 4193), loopback, link-local
(RFC 3927, which holds cloud metadata services at 169.254.169.254), shared, reserved,
unspecified or multicast ones. A target's host is resolved and *every* address it resolves to
is checked; the request then goes to the address checked, so the name cannot resolve somewhere
else between the check and the connection (DNS rebinding). Each redirect is checked the same
way (``app.webhooks.sender``). ``OLSS_WEBHOOK_ALLOW_NETWORKS`` names networks allowed even so
(a receiver on the same private network; the tests' loopback receiver).

A request's ``webhook`` is checked at the edge for what needs no DNS (an address literal, a
``localhost`` name): a 422 then, before the job is queued. Names are resolved at delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from app.errors import InvalidRequest
from app.schemas import GenerateRequest
from olss_core.protocol import WebhookEvent, WebhookTarget
from olss_core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NAMES = ("localhost", "localhost.")
"""Names that are loopback by definition (RFC 6761 §6.3), refused without a lookup."""
LOOPBACK_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class TargetRefused(Exception):
    """A webhook host that resolves to an address the guard does not allow."""


class TargetUnresolved(Exception):
    """A webhook host that resolves to no address (now: DNS may answer later)."""


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) as the IPv4 address it maps."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TargetGuard:
    """Public addresses, and those in ``allowed``."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> TargetGuard:
        return cls(tuple(settings.webhook_allow_networks))

    def permits(self, address: IPAddress) -> bool:
        address = _plain(address)
        if any(address in network for network in self.allowed):
            return True
        return address.is_global and not address.is_multicast

    def _check(self, host: str, addresses: list[IPAddress]) -> None:
        refused = [str(a) for a in addresses if not self.permits(a)]
        if refused:
            raise TargetRefused(
                f"{host} is {', '.join(refused)}: not a public address (allow its network "
                "with OLSS_WEBHOOK_ALLOW_NETWORKS)"
            )

    def check_literal(self, host: str) -> None:
        """Refuse a host that is an address literal or a loopback name the guard does not
        allow; other names pass (they are resolved and checked at delivery)."""
        if host.lower() in LOOPBACK_NAMES:
            self._check(host, list(LOOPBACK_ADDRESSES))
            return
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        self._check(host, [address])

    async def resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to for ``host``: every address it resolves to is checked
        (``TargetRefused`` when one is not allowed, ``TargetUnresolved`` when there is none),
        the first is used."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM
            )
        except OSError as error:
            raise TargetUnresolved(f"{host} does not resolve: {error}") from None
        addresses = list(dict.fromkeys(
            ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos
        ))
        if not addresses:
            raise TargetUnresolved(f"{host} resolves to no address")
        self._check(host, addresses)
        return addresses[0]


def webhook_target(body: GenerateRequest, base_url: str, settings: Settings
                   ) -> WebhookTarget | None:
    """The webhook ``body`` asks for (``None``: none), or ``InvalidRequest`` when this
    deployment sends none or its target is not allowed. ``base_url``: where the request was
    sent, the base of the payload's links."""
    if body.webhook is None:
        return None
    if settings.webhook_secret is None:
        raise InvalidRequest("webhook: this deployment sends no webhooks (OLSS_WEBHOOK_SECRET "
                             "is unset)")
    try:
        TargetGuard.of(settings).check_literal(body.webhook.host or "")
    except TargetRefused as error:
        raise InvalidRequest(f"webhook: {error}") from None
    events = tuple(body.webhook_events_filter or WebhookEvent)
    return WebhookTarget(url=str(body.webhook), events=events, base_url=base_url)
