"""The one guard every outbound HTTP call Keel makes goes through (webhooks, push, …).

Keel POSTs to URLs its tenants choose. Without a guard, a tenant could point one at
the operator's own network (``http://10.0.0.5/admin``, the cloud metadata service at
``169.254.169.254``) and have Keel call it for them (server-side request forgery).
Checking the URL's address once and letting the HTTP client resolve it again is not
enough: a name can answer a public address to the check and a private one to the
connection (DNS rebinding). So this module both decides and connects.

**The address rule** (:func:`refusal_reason`) is an allowlist: only globally routable
unicast addresses (:attr:`ipaddress.IPv4Address.is_global`, not multicast, not one of
the special ranges named in ``_REFUSED``, which makes the rule the same on every Python
version). IPv6 forms that carry an IPv4 address are judged by that address: an
IPv4-mapped ``::ffff:a.b.c.d`` or a NAT64 ``64:ff9b::/96`` address is allowed exactly
when its IPv4 address is; 6to4 (``2002::/16``), Teredo (``2001::/32``) and local-use
NAT64 (``64:ff9b:1::/48``) are never globally routable, and the refusal names the
private IPv4 address they embed, if any. ``allow_private`` (the operator's
``KEEL_WEBHOOK_ALLOW_PRIVATE=1``) allows every address.

**Invariants of** :class:`OutboundHttp`:

- A host name is resolved once per connection; every address of the answer is
  checked (one refused address refuses the whole answer), and the connection goes to
  one of exactly those addresses. Nothing resolves the name again in between.
- No socket is ever connected to a refused address: the socket factory checks the
  address of every connection, including URLs with a literal IP (which the HTTP client
  never hands to a resolver).
- The ``Host`` header, TLS SNI and certificate verification use the URL's host name,
  not the address.
- Redirects are never followed (a 3xx is an answer like any other); cookies are never
  kept (the client is shared by tenants); proxies from the environment are ignored;
  a response body is read up to ``max_response_bytes`` and the rest dropped.
- No aiohttp exception leaves this module: every failure is an :class:`OutboundError`.

Exception tree::

    OutboundError                 the request got no HTTP answer; ``message`` says why
     ├── DestinationRefused       the destination is an address the rule refuses
     ├── DestinationUnresolvable  the host name does not resolve
     └── RequestFailed            connecting, TLS, sending or reading failed, or timed out

Use::

    async with OutboundHttp(allow_private=False, timeout_seconds=15, user_agent="Keel/1") as http:
        response = await http.post(url, body=b"{}", headers={"content-type": "application/json"})
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from aiohappyeyeballs import AddrInfoType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What a refusal tells the operator to do about it.
ALLOW_PRIVATE_HINT: Final = "set KEEL_WEBHOOK_ALLOW_PRIVATE=1 to allow private destinations"
#: How much of a response body :meth:`OutboundHttp.post` keeps by default.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024

# Refused whatever ``is_global`` says on this Python version, each with the words a
# refusal uses. The first match names the range, so the metadata addresses come first.
_REFUSED: Final = tuple(
    (ipaddress.ip_network(network), label)
    for network, label in (
        ("169.254.169.254/32", "the cloud metadata service's link-local address"),
        ("fd00:ec2::254/128", "the cloud metadata service's private address"),
        ("0.0.0.0/8", "a 'this network' address (0.0.0.0 reaches the host itself)"),
        ("::/128", "the unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("fc00::/7", "a private (unique local) address"),
        ("100.64.0.0/10", "a shared address (carrier-grade NAT)"),
        ("169.254.0.0/16", "a link-local address"),
        ("fe80::/10", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol assignment address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("2001:db8::/32", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64: Final = ipaddress.IPv6Network("64:ff9b:1::/48")


# -- the address rule -----------------------------------------------------------------


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached (``"a private address"``), or None when it is a
    globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded, form, routable = _embedded_ipv4(address)
        if embedded is not None:
            inner = refusal_reason(embedded)
            if inner is not None:
                return f"{form} embedding {embedded}, {inner}"
            return None if routable else f"{form}, which is not globally routable"
    for network, label in _REFUSED:
        if address in network:
            return label
    if address.is_multicast or address.is_reserved or not address.is_global:
        return "an address that is not globally routable"
    return None


def _embedded_ipv4(
    address: ipaddress.IPv6Address,
) -> tuple[ipaddress.IPv4Address | None, str, bool]:
    """The IPv4 address an IPv6 form carries, what form it is, and whether the form
    itself is globally routable when that IPv4 address is."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "an IPv4-mapped address", True
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return low32, "a NAT64 address", True
    if address in _LOCAL_NAT64:
        return low32, "a local-use NAT64 address", False
    if address.sixtofour is not None:
        return address.sixtofour, "a 6to4 address", False
    if address.teredo is not None:
        return address.teredo[1], "a Teredo address", False
    return None, "", True


# -- errors -----------------------------------------------------------------------------


class OutboundError(Exception):
    """An outbound request got no HTTP answer; ``message`` says why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DestinationRefused(OutboundError):
    """``host`` resolves to ``address``, which the address rule refuses for ``reason``."""

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        super().__init__(f"{host!r} resolves to {address}, {reason}; {ALLOW_PRIVATE_HINT}")
        self.host = host
        self.address = address
        self.reason = reason


class DestinationUnresolvable(OutboundError):
    """``host`` does not resolve to any address."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host!r}: {reason}")
        self.host = host


class RequestFailed(OutboundError):
    """Connecting, TLS, sending or reading failed, or no answer came in time."""


class _RefusedSocket(OSError):
    """Raised inside aiohttp by the socket factory; :class:`OutboundHttp` turns it back
    into :class:`DestinationRefused` (an OSError, so aiohttp hands it back unchanged)."""

    def __init__(self, refused: DestinationRefused) -> None:
        super().__init__(refused.message)
        self.refused = refused


# -- resolving and checking -------------------------------------------------------------


class NameResolver(Protocol):
    """Turns a host name into the addresses it answers (as text); raises OSError when it
    cannot. Injected so tests can answer what they like."""

    async def resolve(self, host: str, port: int) -> Sequence[str]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``)."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: list[str] = []
        for family, _, _, _, sockaddr in infos:
            text = str(sockaddr[0])
            if family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]:
                text = f"{text.partition('%')[0]}%{sockaddr[3]}"  # keep a link-local scope
            if text not in found:
                found.append(text)
        return found


def check_address(host: str, address: IPAddress, *, allow_private: bool) -> None:
    """Raise :class:`DestinationRefused` when ``address`` (what ``host`` resolved to) may
    not be reached."""
    reason = None if allow_private else refusal_reason(address)
    if reason is not None:
        raise DestinationRefused(host, address, reason)


async def resolve_destination(
    host: str, port: int, *, allow_private: bool, resolver: NameResolver
) -> list[IPAddress]:
    """Resolve ``host`` once and check every address of the answer; return them.

    Raises :class:`DestinationUnresolvable` when it does not resolve and
    :class:`DestinationRefused` (naming the first refused address) when any address of
    the answer may not be reached. A literal IP address is checked without a lookup.
    """
    try:
        return [_checked(host, ipaddress.ip_address(host), allow_private)]
    except ValueError:
        pass  # a name
    try:
        answer = await resolver.resolve(host, port)
    except OSError as exc:
        raise DestinationUnresolvable(host, exc.strerror or str(exc)) from exc
    if not answer:
        raise DestinationUnresolvable(host, "the name has no addresses")
    addresses: list[IPAddress] = []
    for text in answer:
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise DestinationUnresolvable(host, f"the resolver answered {text!r}") from exc
        addresses.append(_checked(host, address, allow_private))
    return addresses


def _checked(host: str, address: IPAddress, allow_private: bool) -> IPAddress:
    check_address(host, address, allow_private=allow_private)
    return address


def destination(url: str) -> tuple[str, int]:
    """The host and port an ``http(s)://`` URL connects to (as the HTTP client reads it);
    ValueError when it is not such a URL."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host or parsed.port is None:
        raise ValueError(f"not an http(s) URL with a host: {url[:100]!r}")
    return parsed.raw_host, parsed.port


class _PinningResolver(AbstractResolver):
    """aiohttp's view of :func:`resolve_destination`: the connector connects to exactly
    the addresses this returns, given as numbers so nothing resolves them again."""

    def __init__(self, names: NameResolver, *, allow_private: bool) -> None:
        self._names = names
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await resolve_destination(
            host, port, allow_private=self._allow_private, resolver=self._names
        )
        results: list[ResolveResult] = []
        for address in addresses:
            found = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family in (socket.AF_UNSPEC, found):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=str(address),
                        port=port,
                        family=found,
                        proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        if not results:
            raise DestinationUnresolvable(
                host, f"no address of family {socket.AddressFamily(family).name}"
            )
        return results

    async def close(self) -> None:
        return None


# -- the client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """An HTTP answer: status, headers (case-insensitive) and the first bytes of the body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class OutboundHttp:
    """The HTTP client for every call Keel makes to an address a tenant chose.

    Build it inside a running event loop and close it (or use ``async with``). One
    instance serves any number of concurrent requests and tenants.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_seconds: float,
        user_agent: str,
        resolver: NameResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """``resolver`` defaults to :class:`SystemResolver`; ``ssl_context`` to the
        system's trusted CAs."""
        self._allow_private = allow_private
        self._timeout = timeout_seconds
        self._max_response_bytes = max_response_bytes
        connector = aiohttp.TCPConnector(
            resolver=_PinningResolver(resolver or SystemResolver(), allow_private=allow_private),
            use_dns_cache=False,
            socket_factory=self._open_socket,
            ssl=ssl_context if ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            headers={"User-Agent": user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    async def __aenter__(self) -> OutboundHttp:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def post(self, url: str, *, body: bytes, headers: Mapping[str, str]) -> OutboundResponse:
        """POST ``body`` to ``url`` and return the answer, whatever its status (a
        redirect is returned, not followed). Raises an :class:`OutboundError`."""
        try:
            host, _ = destination(url)
        except ValueError as exc:
            raise RequestFailed(str(exc)) from exc
        try:
            async with self._session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                return OutboundResponse(
                    status=response.status,
                    headers=CIMultiDictProxy(CIMultiDict(response.headers)),
                    body=await self._read_body(response),
                )
        except OutboundError:
            raise
        except TimeoutError as exc:
            raise RequestFailed(f"no answer within {self._timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            refused = _refusal_in(exc.os_error)
            if refused is not None:
                raise DestinationRefused(host, refused.address, refused.reason) from exc
            raise RequestFailed(_describe(exc)) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise RequestFailed(_describe(exc)) from exc

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(16 * 1024):
            kept = chunk[: self._max_response_bytes - size]
            chunks.append(kept)
            size += len(kept)
            if size >= self._max_response_bytes:
                break  # the rest is dropped with the connection
        return b"".join(chunks)

    def _open_socket(self, addr_info: AddrInfoType) -> socket.socket:
        """The socket of every connection, refused before it exists when its address may
        not be reached (the last line: literal-IP URLs never meet the resolver)."""
        family, kind, proto, _, sockaddr = addr_info
        text = str(sockaddr[0])
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise OSError(f"not an IP address: {text!r}") from exc
        try:
            check_address(text, address, allow_private=self._allow_private)
        except DestinationRefused as refused:
            raise _RefusedSocket(refused) from None
        return socket.socket(family, kind, proto)


def _refusal_in(error: OSError) -> DestinationRefused | None:
    return error.refused if isinstance(error, _RefusedSocket) else None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
