"""The network guard: a crawl fetches only ``http``/``https`` urls on global addresses, proxies included.

A pool's urls are written by strangers. On a cloud node ``http://169.254.169.254/...`` answers with the
node's credentials; ``http://10.0.0.1/`` or ``http://localhost:6379/`` reach services that trust the
inside; ``file:///etc/...`` reads the disk. The download workers therefore:

* fetch with ``open_url``: an opener with the HTTP(S), proxy and redirect handlers only (no ``file:``,
  ``ftp:`` or ``data:`` handler exists to misuse); every url and every redirect target is checked first;
* install ``install_guard``: every ``getaddrinfo`` result and every ``socket.connect`` to a denied
  address raises ``DeniedAddressError`` before a packet is sent, so the address a name resolves to is
  judged at connect time (no DNS-rebinding gap when fetching directly).

What is denied (``NetworkPolicy``): every address that is not global: the ``BUILTIN_DENY`` table
(private, loopback, link-local, CGNAT, ULA, multicast, reserved, documentation, ...) plus whatever
``ipaddress`` does not call global, IPv6 outside 2000::/3 (except NAT64 64:ff9b::/96), the cloud
metadata names, and the forms that carry an IPv4 address inside an IPv6 one (IPv4-mapped, -compatible,
-translated, NAT64, 6to4, Teredo), each judged by the IPv4 address it carries. The user's
``deny`` networks add to this; ``allow`` networks open holes (the built-in pool's 127.0.0.1). The most
specific rule wins; on a tie a user deny beats an allow, and an allow beats a built-in deny, so allowing
169.254.0.0/16 leaves 169.254.169.254/32 (metadata) denied unless it is allowed by name.

Proxies (``http_proxy`` / ``https_proxy``, any case): through a proxy the target's address is never
resolved here, so while a proxy is set every url is resolved here first and refused if any of its
addresses is denied; redirects are checked the same way. The proxy itself is the user's own setting:
connections to it are allowed (only for the requests sent through it) even when it is on a denied
network. Limits: the proxy resolves the name again, so a name whose DNS answer changes between the two
lookups (DNS rebinding, short TTLs) can still reach what the proxy can reach; a name this node cannot
resolve is not sent to the proxy (recorded as a dns failure). Where that matters, the proxy's own
access rules must deny internal networks too. ``all_proxy`` is not used by urllib for http(s), so those
urls go direct and the socket guard applies.

Every refusal message starts with ``DENIED_MARK``; img2dataset records it per sample and the download
report counts it as ``denied``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

from poolsieve.core.errors import ConfigError
from poolsieve.core.fetch_clock import ClockedHTTPHandler, ClockedHTTPSHandler, FetchClock

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# (network, why it is denied). IANA's special-purpose registries; see NetworkPolicy for the rest.
BUILTIN_DENY: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network / unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("100.100.100.200/32", "cloud metadata (Alibaba)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("169.254.169.254/32", "cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("64:ff9b:1::/48", "NAT64 local-use"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique-local"),
    ("fd00:ec2::254/128", "cloud metadata (AWS)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
DEFAULT_DENY_NETWORKS: tuple[str, ...] = tuple(net for net, _ in BUILTIN_DENY)
DENIED_HOSTNAMES: tuple[str, ...] = ("metadata.google.internal", "metadata.goog")
DENIED_MARK = "poolsieve-denied"
ALLOWED_SCHEMES = ("http", "https")

_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPAT = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NETLOC_BAD = frozenset('\\"<>^`{|}')  # ASCII that RFC 3986 never allows in an authority


class DeniedAddressError(OSError):
    """A url or a connection was refused before anything was sent."""


def _network(spec: str, key: str) -> Network:
    """``spec`` as a network; an IPv4-mapped IPv6 network becomes the IPv4 network it maps."""
    try:
        net = ipaddress.ip_network(str(spec).strip(), strict=False)
    except ValueError:
        raise ConfigError(f"download.{key}: {spec!r} is not a network (CIDR like 10.0.0.0/8)") from None
    if net.version == 6 and net.prefixlen >= 96 and net.network_address in _MAPPED:
        mapped = net.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[ipaddress.IPv4Address, str]]:
    """The IPv4 addresses an IPv6 address carries, with the form that carries each."""
    n = int(ip)
    out: list[tuple[ipaddress.IPv4Address, str]] = []
    if ip in _COMPAT and n > 1:
        out.append((ipaddress.IPv4Address(n & 0xFFFFFFFF), "IPv4-compatible"))
    elif ip in _TRANSLATED:
        out.append((ipaddress.IPv4Address(n & 0xFFFFFFFF), "IPv4-translated"))
    elif ip in _NAT64:
        out.append((ipaddress.IPv4Address(n & 0xFFFFFFFF), "NAT64"))
    elif ip in _NAT64_LOCAL:  # RFC 6052 /48 layout: bits 48-63 and 72-87
        out.append((ipaddress.IPv4Address((((n >> 64) & 0xFFFF) << 16) | ((n >> 40) & 0xFFFF)), "NAT64"))
    if ip.sixtofour is not None:
        out.append((ip.sixtofour, "6to4"))
    if ip.teredo is not None:
        server, client = ip.teredo
        out += [(server, "Teredo server"), (client, "Teredo client")]
    return out


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class NetworkPolicy:
    """Which addresses a crawl may connect to: global ones, minus ``deny``, plus ``allow`` (CIDR strings)."""

    def __init__(self, deny: Iterable[str] = (), allow: Iterable[str] = (),
                 hostnames: Iterable[str] = DENIED_HOSTNAMES):
        # (network, rank, label): rank breaks ties between rules of the same prefix length.
        self.rules: list[tuple[Network, int, str | None]] = [
            (ipaddress.ip_network(net), 0, why) for net, why in BUILTIN_DENY]
        self.deny = [_network(s, "deny_networks") for s in deny]
        self.allow = [_network(s, "allow_networks") for s in allow]
        self.rules += [(net, 2, "--deny-network") for net in self.deny]
        self.rules += [(net, 1, None) for net in self.allow]
        self.hostnames = {h.lower().rstrip(".") for h in hostnames}

    def why_denied(self, ip: Address) -> str | None:
        """Why ``ip`` is denied (a phrase: "is in denied network ..."), or None when it is allowed."""
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.version == 6:
            for inner, form in embedded_ipv4(ip):
                why = self.why_denied(inner)
                if why:
                    return f"embeds IPv4 {inner} ({form}), which {why}"
        best: tuple[int, int, Network, str | None] | None = None
        for net, rank, label in self.rules:
            if ip.version == net.version and ip in net and (best is None or (net.prefixlen, rank) > best[:2]):
                best = (net.prefixlen, rank, net, label)
        if best is not None:
            _, rank, net, label = best
            return None if rank == 1 else f"is in denied network {net} ({label})"
        if not ip.is_global:
            return "is not a global address"
        if ip.version == 6 and ip not in _GLOBAL_UNICAST_V6 and ip not in _NAT64:
            return "is outside IPv6 global unicast (2000::/3)"
        return None

    def reason_for_address(self, address: str) -> str | None:
        """The refusal message for an IP literal, or None (allowed, or not an IP literal)."""
        ip = _address(address)
        why = None if ip is None else self.why_denied(ip)
        return None if why is None else f"{DENIED_MARK}: address {address.strip('[]')} {why}"

    def reason_for_host(self, host: str) -> str | None:
        """The refusal message for a host (a name or an IP literal, not resolved), or None."""
        h = host.lower().strip("[]").rstrip(".")
        if h in self.hostnames:
            return f"{DENIED_MARK}: host {host} is a cloud metadata name"
        return self.reason_for_address(h)

    def reason_for_url(self, url: str) -> str | None:
        """The refusal message for a url (scheme, host; nothing resolved), or None."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as e:
            return f"{DENIED_MARK}: malformed url ({e})"
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            return f"{DENIED_MARK}: url scheme {scheme + ':' if scheme else '(none)'} is refused " \
                   f"(only {' and '.join(ALLOWED_SCHEMES)} urls are fetched)"
        if not parts.hostname:
            return f"{DENIED_MARK}: url has no host"
        bad = [c for c in parts.netloc if c in _NETLOC_BAD or not c.isprintable() or c.isspace()]
        if bad or parts.netloc.count("@") > 1:  # a proxy could read such a host differently from urllib
            return f"{DENIED_MARK}: malformed url (host part {parts.netloc!r} has {bad[0] if bad else '@'!r})"
        return self.reason_for_host(parts.hostname)

    def check_url(self, url: str, resolve: bool = False) -> None:
        """Raise ``DeniedAddressError`` if ``url`` is refused; with ``resolve``, every address its host
        resolves to here must be allowed too (used before handing a url to a proxy)."""
        reason = self.reason_for_url(url)
        if reason:
            raise DeniedAddressError(reason)
        if resolve:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            self.check_resolved(parts.hostname or "", port)

    def check_resolved(self, host: str, port: int) -> None:
        try:
            results = _original_getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as e:
            raise OSError(f"name resolution failed for {host} ({e}); through a proxy a host must resolve "
                          "here so that its address can be checked") from None
        for *_, sockaddr in results:
            why = self.why_denied(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
            if why:
                raise DeniedAddressError(f"{DENIED_MARK}: host {host} resolves to {sockaddr[0]}, which {why}")


DenyList = NetworkPolicy  # the earlier name


# ----------------------------------------------------------------------------- socket guard
_original_getaddrinfo = socket.getaddrinfo
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex
_installed: NetworkPolicy | None = None
_local = threading.local()  # proxy endpoints that the current thread's request goes through


def _proxy_sockaddrs() -> set[tuple[str, int]]:
    if not hasattr(_local, "sockaddrs"):
        _local.sockaddrs = set()
    return _local.sockaddrs


def _check_sockaddr(policy: NetworkPolicy, address: Any, host: Any = None) -> None:
    if not (isinstance(address, tuple) and address and isinstance(address[0], str)):
        return
    if (address[0], address[1]) in _proxy_sockaddrs():
        return
    ip = _address(address[0])
    why = None if ip is None else policy.why_denied(ip)
    if why:
        shown = f"host {host} resolves to {address[0]}, which" if host and host != address[0] else \
            f"address {address[0]}"
        raise DeniedAddressError(f"{DENIED_MARK}: {shown} {why}")


def install_guard(deny: Sequence[str] = (), allow: Sequence[str] = (),
                  hostnames: Sequence[str] = DENIED_HOSTNAMES) -> NetworkPolicy:
    """Refuse, in this process, every connection to a denied address. Idempotent; the last policy wins."""
    global _installed
    policy = NetworkPolicy(deny, allow, hostnames)
    _installed = policy

    def guarded_getaddrinfo(host: Any, port: Any = None, *args: Any, **kwargs: Any) -> Any:
        current = _installed
        if current is not None and isinstance(host, str):
            endpoints = getattr(_local, "endpoints", ())
            if (host.lower().strip("[]"), _port(port)) in endpoints:  # the user's proxy: trusted
                results = _original_getaddrinfo(host, port, *args, **kwargs)
                _proxy_sockaddrs().update((str(sa[0]), sa[1]) for *_, sa in results)
                return results
            reason = current.reason_for_host(host)
            if reason:
                raise DeniedAddressError(reason)
        results = _original_getaddrinfo(host, port, *args, **kwargs)
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
    return policy


def uninstall_guard() -> None:
    """Restore the socket functions (tests)."""
    global _installed
    _installed = None
    socket.getaddrinfo = _original_getaddrinfo
    socket.socket.connect = _original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _original_connect_ex  # type: ignore[method-assign]


def _port(port: Any) -> int | None:
    try:
        return int(port)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- fetching
def fetch_proxies() -> dict[str, str]:
    """The proxies urllib uses for http and https urls (``http_proxy`` / ``https_proxy``, any case)."""
    return {k: v for k, v in urllib.request.getproxies().items() if k in ALLOWED_SCHEMES}


def proxy_endpoints(proxies: dict[str, str]) -> frozenset[tuple[str, int]]:
    """(host, port) pairs urllib connects to for these proxies (80 and 443 when a proxy has no port)."""
    out: set[tuple[str, int]] = set()
    for value in proxies.values():
        try:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            host, port = parts.hostname, parts.port
        except ValueError:
            continue
        if host:
            out.update((host.lower(), p) for p in ((port,) if port else (80, 443)))
    return frozenset(out)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a url the policy allows (resolved here when it goes through a proxy)."""

    def __init__(self, policy: NetworkPolicy, proxies: dict[str, str]):
        self.policy, self.proxies = policy, proxies

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        reason = location and self.policy.reason_for_url(urljoin(req.full_url, location.strip()))
        if reason:  # before urllib's own check, which lets ftp: through and words a refusal as an HTTP error
            fp.close()
            raise DeniedAddressError(f"{reason} (redirect from {req.full_url})")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            self.policy.check_url(newurl, resolve=bool(self.proxies))
        except OSError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(policy: NetworkPolicy, proxies: dict[str, str],
                 clock: FetchClock | None = None) -> urllib.request.OpenerDirector:
    """An opener that speaks http and https only (directly or through ``proxies``): no file, ftp or data
    handler; redirects are checked by ``policy``; with a ``clock``, every hop keeps to its deadline."""
    opener = urllib.request.OpenerDirector()
    http_handlers = (ClockedHTTPHandler(clock), ClockedHTTPSHandler(clock)) if clock is not None else \
        (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler())
    for handler in (urllib.request.ProxyHandler(dict(proxies)), urllib.request.UnknownHandler(), *http_handlers,
                    urllib.request.HTTPDefaultErrorHandler(), _CheckedRedirects(policy, proxies),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def open_url(url: str, timeout: float, headers: dict[str, str] | None = None,
             deadline: float | None = None) -> Any:
    """``urlopen`` for an untrusted url under the installed policy (the default one if none is installed).
    ``timeout`` bounds each connect and read; ``deadline`` (seconds) the whole fetch, every redirect hop and
    the reading of the returned response included (``fetch_clock``).

    Raises ``DeniedAddressError`` (an ``OSError``) with a ``DENIED_MARK`` message for a refused url, and
    ``FetchDeadlineExceeded`` (a ``TimeoutError``) when the deadline passes."""
    clock = FetchClock(deadline) if deadline is not None else None
    policy = _installed or NetworkPolicy()
    proxies = fetch_proxies()
    policy.check_url(url, resolve=bool(proxies))  # with a proxy set, check what the proxy would reach
    request = urllib.request.Request(url, data=None, headers=headers or {})
    _local.endpoints = proxy_endpoints(proxies)
    try:
        return build_opener(policy, proxies, clock).open(request, timeout=timeout)
    finally:
        _local.endpoints = frozenset()
        _proxy_sockaddrs().clear()
