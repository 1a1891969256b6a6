"""SSRF guard for agent callback URLs: only public addresses, unless the operator allowed a host or CIDR."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from approvals.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class CallbackAllowList:
    """APPROVALS_CALLBACK_ALLOW_HOSTS: exact host names and IP networks that may be non-public."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> CallbackAllowList:
        hosts, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """In an allowed network, or an IPv6 form of an address in one (an allowed 10.0.0.0/8 also
        allows ::ffff:10.1.2.3 and 64:ff9b::a01:203, which reach the same host). An address that embeds
        two (Teredo: its server and its client) is allowed only when each is allowed or public."""
        if any(address in network for network in self.networks):
            return True
        embedded = embedded_ipv4(address)
        return bool(embedded) and all(
            is_public(inner) or any(inner in network for network in self.networks) for inner in embedded
        )


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet is delivered to: NAT64's
# well-known prefix (RFC 6052), IPv4-translated (RFC 2765) and the deprecated IPv4-compatible form.
_LOW_32_BITS_EMBED = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("::/96"),
)
# Never globally reachable, whatever they embed: local-use NAT64 (RFC 8215, the operator's own
# translator, whose prefix length fixes where an IPv4 sits) and deprecated site-local (RFC 3879).
# The `ipaddress` module calls both global on Python 3.11.
_NEVER_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address stands for (mapped, 6to4, Teredo, NAT64...), else ()."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo  # (server, client); the module undoes the client's XOR
    if any(address in network for network in _LOW_32_BITS_EMBED):
        return (ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF),)
    return ()


@functools.lru_cache(maxsize=4096)
def is_public(address: IPAddress) -> bool:
    """Public unicast only: loopback, private, link-local (cloud metadata), shared, reserved are not,
    nor an IPv6 address that embeds such an IPv4 one (the packet reaches the IPv4 address).

    Cached: it depends on the address alone, and is asked at every delivery attempt.
    """
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _NEVER_PUBLIC):
        return False
    embedded = embedded_ipv4(address)
    if embedded:
        return all(is_public(inner) for inner in embedded)
    return address.is_global and not address.is_multicast


@functools.lru_cache(maxsize=4096)
def _ip_literal(host: str) -> IPAddress | None:
    # Pure parsing (no DNS), cached: a callback host is the same string at every attempt, and
    # ip_address() costs more than the rest of the check (failing on a name raises, too).
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address a host name resolves to (an IP literal resolves to itself)."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_SECONDS
    )
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


async def check_callback_url(url: str, allow: CallbackAllowList, *, field: str = "callback_url") -> None:
    """Refuse a URL whose host is, or resolves to, a non-public address the operator did not allow.

    Called when a request is accepted and again before every delivery (DNS can change in between).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allow.allows_host(host):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except (OSError, TimeoutError, UnicodeError):
        raise InvalidInput(
            "callback_url_unresolvable", f"{field}: host {host!r} does not resolve", field
        ) from None
    for address in addresses:
        if not is_public(address) and not allow.allows_address(address):
            raise InvalidInput(
                "callback_url_forbidden",
                f"{field}: {host!r} resolves to {address}, a non-public address; "
                "the operator can allow it with APPROVALS_CALLBACK_ALLOW_HOSTS",
                field,
            )
