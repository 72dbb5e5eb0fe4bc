"""The SSRF guard: which URLs webhooks may be sent to, and the one address each is sent to.

A webhook URL is chosen by the client but fetched from inside the deployment, where Redis, S3,
the cluster's services and the cloud metadata endpoint are reachable. So:

- only ``http`` and ``https``, no credentials in the URL, at most ``MAX_WEBHOOK_URL_CHARS``;
- the host is resolved **once**; if *any* of its addresses is loopback, private, link-local,
  carrier-grade NAT, multicast, reserved, unspecified or a known metadata address (IPv4, IPv6,
  and IPv6 forms that embed an IPv4 address: mapped, 6to4, Teredo, NAT64) the URL is refused;
- the request then connects to those resolved addresses (``Target.addresses``), with the URL's host
  in ``Host`` and in TLS SNI and certificate checks, so DNS cannot answer differently between the
  check and the connection (rebinding);
- numeric hosts in any form a resolver accepts (``2130706433``, ``0177.0.0.1``, ``0x7f.1``) are
  addresses like any other, and are checked at submit time already;
- redirects are never followed (the dispatcher's client does not follow them).

Hosts in the allow-list (``LATENTQ_WEBHOOK_ALLOWED_HOSTS``) skip the address checks: local
development, tests, and receivers on a private network the operator trusts.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urlsplit

from latentq.contract import MAX_WEBHOOK_URL_CHARS

IPAddress = IPv4Address | IPv6Address

_CGNAT = ip_network("100.64.0.0/10")
_NAT64 = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
#: Metadata services that sit on addresses the class checks alone would let through (Azure's
#: wire server is a public address), and the well-known ones, named for clearer refusals.
_METADATA = {
    ip_address(address)
    for address in ("169.254.169.254", "168.63.129.16", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
}
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(ValueError):
    """A webhook URL the guard refuses; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the URL's parts and the single address it connects to."""

    scheme: str
    host: str
    port: int
    #: Path and query, as given (``/`` when the URL has no path).
    path: str
    #: The resolved addresses, every one checked: the request connects to the first that answers.
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the URL's host, with its port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if _DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def address_refusal(address: IPAddress) -> str | None:
    """Return why ``address`` may not receive webhooks, or None if it is a public address."""
    if address in _METADATA:
        return "a cloud metadata address"
    if isinstance(address, IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and any(address in network for network in _NAT64):
            embedded = IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason} (embedded in {address})" if reason else None
    checks = [
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, IPv4Address) and address in _CGNAT, "a carrier-grade NAT address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    ]
    return next((reason for refused, reason in checks if refused), None)


def literal_address(host: str) -> IPAddress | None:
    """Return the address ``host`` spells numerically (in any form resolvers accept), else None."""
    try:
        return ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host) and any(char.isdigit() for char in host):
        try:  # inet_aton reads the classic forms: 2130706433, 0177.0.0.1, 0x7f.1, 127.1
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def split_url(url: str) -> tuple[str, str, int, str]:
    """Return ``url``'s (scheme, host, port, path with query); raise ``UnsafeUrl`` if it is not an
    absolute http(s) URL without credentials."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise UnsafeUrl(f"is longer than {MAX_WEBHOOK_URL_CHARS} characters")
    if any(char.isspace() or ord(char) < 0x20 for char in url):
        raise UnsafeUrl("contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeUrl(f"must be an http:// or https:// URL (got scheme '{parts.scheme}')")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("must not carry credentials (user:password@); put a token in the path or query")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeUrl(f"has an invalid host name '{host}'") from None
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UnsafeUrl("has an invalid port") from None
    path = parts.path or "/"
    return scheme, host, port, f"{path}?{parts.query}" if parts.query else path


def _allow_entry(entry: str) -> tuple[str, str]:
    """An allow-list entry's host and port ('' for every port): ``host``, ``host:port``, ``v6``
    or ``[v6]:port``."""
    entry = entry.lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def _allowed(host: str, port: int, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``host:port`` is on the allow-list: an entry with a port allows that port only."""
    entries = (_allow_entry(entry) for entry in allowed_hosts)
    return any(
        host.lower() == name.rstrip(".") and entry_port in ("", str(port)) for name, entry_port in entries
    )


def check_url(url: str, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Raise ``UnsafeUrl`` unless ``url`` may receive webhooks, as far as can be told without DNS
    (its form, and its host when that is a numeric address)."""
    _, host, port, _ = split_url(url)
    if _allowed(host, port, allowed_hosts):
        return
    address = literal_address(host)
    if address is not None:
        reason = address_refusal(address)
        if reason:
            raise UnsafeUrl(f"host {host} is {reason}")
    elif host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise UnsafeUrl(f"host {host} is a loopback name")


def resolve(url: str, allowed_hosts: tuple[str, ...] = ()) -> Target:
    """Resolve ``url``'s host once and return where to send to; raise ``UnsafeUrl`` if any of its
    addresses is refused, ``OSError`` (``socket.gaierror``) if it does not resolve."""
    scheme, host, port, path = split_url(url)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise socket.gaierror(f"{host} has no addresses")
    if not _allowed(host, port, allowed_hosts):
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise UnsafeUrl(f"host {host} resolves to {address}, {reason}")
    return Target(scheme, host, port, path, tuple(dict.fromkeys(str(address) for address in addresses)))
