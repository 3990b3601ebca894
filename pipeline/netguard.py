"""A deny list of networks that a crawl must never fetch from.

On a cloud node, ``http://169.254.169.254/...`` answers with the node's credentials; a pool's url list
can point there (by mistake or on purpose). The download workers install ``install_guard`` before
fetching: every socket connection (through ``getaddrinfo`` and ``socket.connect``) to an address in a
denied network raises ``DeniedAddressError`` before a packet is sent. img2dataset records the error
message per sample; ``DENIED_MARK`` in it lets the download report count it as ``denied``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

# Link-local (IPv4/IPv6; AWS, GCP, Azure, OCI, DigitalOcean metadata live at 169.254.169.254),
# AWS's IPv6 metadata address, Alibaba Cloud's metadata address, and "this network".
DEFAULT_DENY_NETWORKS: tuple[str, ...] = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "0.0.0.0/8",
)
DENIED_HOSTNAMES: tuple[str, ...] = ("metadata.google.internal", "metadata.goog")
DENIED_MARK = "poolsieve-denied"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DeniedAddressError(OSError):
    """A connection to a denied network was refused before it was made."""


class DenyList:
    """Networks (CIDR strings) and host names whose addresses are never connected to."""

    def __init__(self, networks: Iterable[str] = DEFAULT_DENY_NETWORKS,
                 hostnames: Iterable[str] = DENIED_HOSTNAMES):
        self.specs = [str(n) for n in networks]
        self.networks: list[Network] = []
        for spec in self.specs:
            try:
                self.networks.append(ipaddress.ip_network(spec, strict=False))
            except ValueError:
                from poolsieve.core.errors import ConfigError

                raise ConfigError(f"deny_networks: {spec!r} is not a network (CIDR like 169.254.0.0/16)") from None
        self.hostnames = {h.lower().rstrip(".") for h in hostnames}

    def network_of(self, address: str) -> Network | None:
        """The denied network that ``address`` (an IP literal) is in, or None."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for net in self.networks:
            if ip.version == net.version and ip in net:
                return net
        return None

    def reason_for_host(self, host: str) -> str | None:
        """Why ``host`` (a name or an IP literal, not resolved) is denied, or None."""
        h = host.lower().strip("[]").rstrip(".")
        if h in self.hostnames:
            return f"{DENIED_MARK}: host {host} is a cloud metadata name"
        net = self.network_of(h)
        return None if net is None else f"{DENIED_MARK}: address {h} is in denied network {net}"

    def reason_for_url(self, url: str) -> str | None:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return None
        return None if not host else self.reason_for_host(host)


_original_getaddrinfo = socket.getaddrinfo
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_installed: DenyList | None = None


def _check_sockaddr(deny: DenyList, address: Any, host: Any = None) -> None:
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        net = deny.network_of(address[0])
        if net is not None:
            shown = f"host {host} resolves to {address[0]}" if host and host != address[0] else f"address {address[0]}"
            raise DeniedAddressError(f"{DENIED_MARK}: {shown} in denied network {net}")


def install_guard(networks: Sequence[str] = DEFAULT_DENY_NETWORKS,
                  hostnames: Sequence[str] = DENIED_HOSTNAMES) -> DenyList:
    """Refuse, in this process, every connection to a denied address. Idempotent; the last list wins."""
    global _installed
    deny = DenyList(networks, hostnames)
    _installed = deny

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        current = _installed
        if current is not None and isinstance(host, str):
            reason = current.reason_for_host(host)
            if reason:
                raise DeniedAddressError(reason)
        results = _original_getaddrinfo(host, *args, **kwargs)
        if current is not None:
            for *_, sockaddr in results:
                _check_sockaddr(current, sockaddr, host)
        return results

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if _installed is not None and self.family in (socket.AF_INET, socket.AF_INET6):
            _check_sockaddr(_installed, address)
        return _original_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        if _installed is not None and self.family in (socket.AF_INET, socket.AF_INET6):
            _check_sockaddr(_installed, address)
        return _original_connect_ex(self, address)

    socket.getaddrinfo = guarded_getaddrinfo
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    return deny


def uninstall_guard() -> None:
    """Restore the socket functions (tests)."""
    global _installed
    _installed = None
    socket.getaddrinfo = _original_getaddrinfo
    socket.socket.connect = _original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _original_connect_ex  # type: ignore[method-assign]
