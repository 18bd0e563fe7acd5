"""The outbound guard (``service_kit/outbound.py``): the address rule, and the client that
connects only to the address it checked.

The rule is a table test over every range it refuses and their neighbours it allows. The
client is tested against real HTTP servers (aiohttp) on 127.0.0.1 and 127.0.0.2, port 0,
with an injected resolver that answers what each test needs — including a name that
answers a public address first and a loopback address afterwards (DNS rebinding). Every
wait is bounded by the client's own timeout.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiohttp import web

from service_kit.outbound import (
    DestinationRefused,
    DestinationUnresolvable,
    OutboundHttp,
    RequestFailed,
    refusal_reason,
    resolve_destination,
)
from tests.conftest import free_port

PUBLIC = "93.184.215.14"
HINT = "set KEEL_WEBHOOK_ALLOW_PRIVATE=1 to allow private destinations"

# -- the address rule ---------------------------------------------------------------------

REFUSED = [
    # RFC 1918 private networks, first and last addresses
    ("10.0.0.0", "a private address"),
    ("10.255.255.255", "a private address"),
    ("172.16.0.0", "a private address"),
    ("172.31.255.255", "a private address"),
    ("192.168.0.0", "a private address"),
    ("192.168.255.255", "a private address"),
    # loopback, "this network", link-local and the cloud metadata services
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("0.0.0.0", "'this network'"),
    ("0.255.255.255", "'this network'"),
    ("169.254.0.1", "a link-local address"),
    ("169.254.255.254", "a link-local address"),
    ("169.254.169.254", "the cloud metadata service's link-local address"),
    ("fd00:ec2::254", "the cloud metadata service's private address"),
    # shared address space (carrier-grade NAT) and IETF protocol assignments
    ("100.64.0.0", "a shared address (carrier-grade NAT)"),
    ("100.127.255.255", "a shared address (carrier-grade NAT)"),
    ("192.0.0.0", "an IETF protocol assignment address"),
    ("192.0.0.9", "an IETF protocol assignment address"),
    ("192.0.0.255", "an IETF protocol assignment address"),
    # documentation, benchmarking, multicast, reserved, broadcast
    ("192.0.2.1", "a documentation address"),
    ("198.51.100.7", "a documentation address"),
    ("203.0.113.200", "a documentation address"),
    ("198.18.0.1", "a benchmarking address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.255", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    # IPv6 loopback, unspecified, unique local, link-local, multicast, documentation
    ("::1", "a loopback address"),
    ("::", "the unspecified address"),
    ("fc00::1", "a private (unique local) address"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "a private (unique local) address"),
    ("fe80::1", "a link-local address"),
    ("febf:ffff::1", "a link-local address"),
    ("ff02::1", "a multicast address"),
    ("2001:db8::1", "a documentation address"),
    ("100::1", "not globally routable"),
    # IPv4-mapped forms of refused IPv4 addresses
    ("::ffff:10.0.0.5", "an IPv4-mapped address embedding 10.0.0.5, a private address"),
    ("::ffff:127.0.0.1", "an IPv4-mapped address embedding 127.0.0.1, a loopback address"),
    (
        "::ffff:169.254.169.254",
        "an IPv4-mapped address embedding 169.254.169.254, the cloud metadata service's",
    ),
    ("::ffff:100.64.0.1", "embedding 100.64.0.1, a shared address"),
    # 6to4 (2002::/16): the embedded address is named; a public one is still refused
    ("2002:a00:5::1", "a 6to4 address embedding 10.0.0.5, a private address"),
    ("2002:7f00:1::", "a 6to4 address embedding 127.0.0.1, a loopback address"),
    ("2002:a9fe:a9fe::1", "a 6to4 address embedding 169.254.169.254"),
    ("2002:808:808::1", "a 6to4 address, which is not globally routable"),
    # Teredo (2001::/32): the client address is stored inverted in the last 32 bits
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "a Teredo address embedding 10.0.0.5, a private"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a Teredo address embedding 127.0.0.1, a loopback"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "a Teredo address, which is not globally routable"),
    # NAT64: the well-known prefix is judged by its IPv4 address; local-use never passes
    ("64:ff9b::a00:5", "a NAT64 address embedding 10.0.0.5, a private address"),
    ("64:ff9b::7f00:1", "a NAT64 address embedding 127.0.0.1, a loopback address"),
    ("64:ff9b::a9fe:a9fe", "a NAT64 address embedding 169.254.169.254"),
    ("64:ff9b::6440:1", "a NAT64 address embedding 100.64.0.1, a shared address"),
    ("64:ff9b:1::a00:5", "a local-use NAT64 address embedding 10.0.0.5, a private address"),
    ("64:ff9b:1::808:808", "a local-use NAT64 address, which is not globally routable"),
]

ALLOWED = [
    PUBLIC,
    "8.8.8.8",
    "1.1.1.1",
    # the neighbours of refused ranges
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.0",
    "192.167.255.255",
    "192.169.0.0",
    "223.255.255.255",
    # public IPv6, and IPv6 forms of public IPv4 addresses that route globally
    "2606:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_the_rule_refuses_every_address_that_is_not_globally_routable(
    address: str, reason: str
) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None, address
    assert reason in found, (address, found)


@pytest.mark.parametrize("address", ALLOWED)
def test_the_rule_allows_globally_routable_unicast_addresses(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


# -- resolving and checking ---------------------------------------------------------------


@dataclass
class ScriptedResolver:
    """Answers each lookup with the next answer of ``answers`` (the last one for ever after)
    and counts lookups; an answer of None fails as an unknown name does."""

    answers: list[Sequence[str] | None]
    lookups: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            raise OSError(-2, "Name or service not known")
        return answer


async def test_every_address_of_an_answer_is_checked_and_one_refused_refuses_it() -> None:
    resolver = ScriptedResolver([[PUBLIC, "2606:4700::1111", "10.0.0.5"]])
    with pytest.raises(DestinationRefused) as caught:
        await resolve_destination("mixed.test", 443, allow_private=False, resolver=resolver)
    assert caught.value.message == f"'mixed.test' resolves to 10.0.0.5, a private address; {HINT}"
    assert caught.value.address == ipaddress.ip_address("10.0.0.5")
    found = await resolve_destination("mixed.test", 443, allow_private=True, resolver=resolver)
    assert [str(a) for a in found] == [PUBLIC, "2606:4700::1111", "10.0.0.5"]


async def test_a_literal_address_is_checked_without_a_lookup() -> None:
    resolver = ScriptedResolver([None])
    with pytest.raises(
        DestinationRefused, match=r"'127\.0\.0\.1' resolves to 127\.0\.0\.1, a loopback"
    ):
        await resolve_destination("127.0.0.1", 80, allow_private=False, resolver=resolver)
    found = await resolve_destination(PUBLIC, 80, allow_private=False, resolver=resolver)
    assert found == [ipaddress.ip_address(PUBLIC)]
    assert resolver.lookups == []


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (None, "cannot resolve 'gone.test': Name or service not known"),
        ([], "cannot resolve 'gone.test': the name has no addresses"),
        (["not-an-address"], "cannot resolve 'gone.test': the resolver answered 'not-an-address'"),
    ],
)
async def test_a_name_without_addresses_is_unresolvable(
    answer: Sequence[str] | None, why: str
) -> None:
    for allow_private in (False, True):
        with pytest.raises(DestinationUnresolvable) as caught:
            await resolve_destination(
                "gone.test", 80, allow_private=allow_private, resolver=ScriptedResolver([answer])
            )
        assert caught.value.message == why


# -- the client, against real servers ----------------------------------------------------


@dataclass
class Server:
    """An HTTP server on ``host`` recording every request; answers as ``answer`` says."""

    host: str
    port: int = 0
    hits: list[web.Request] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    answer: Callable[[], web.Response] = lambda: web.Response(text="ok")
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request)
        await request.read()
        if self.hold is not None:
            await self.hold.wait()
        return self.answer()


@asynccontextmanager
async def serving(
    host: str, port: int = 0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(host)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        server.port = int(runner.addresses[0][1])
        yield server
    finally:
        if server.hold is not None:
            server.hold.set()
        await runner.cleanup()


class OfflineOutboundHttp(OutboundHttp):
    """The real client, but every socket it opens is recorded, and one to a public address
    fails as an unreachable network would, so no test sends a packet off this machine."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sockets: list[str] = []

    def _open_socket(self, addr_info: Any) -> socket.socket:
        sock = super()._open_socket(addr_info)  # the guard's own check first
        address = str(addr_info[4][0])
        self.sockets.append(address)
        if refusal_reason(ipaddress.ip_address(address)) is None:
            sock.close()
            raise OSError(errno.ENETUNREACH, "the tests never reach a public address")
        return sock


@asynccontextmanager
async def client(
    *answers: Sequence[str] | None, allow_private: bool = False, **options: Any
) -> AsyncIterator[tuple[OfflineOutboundHttp, ScriptedResolver]]:
    resolver = ScriptedResolver(list(answers) or [None])
    options.setdefault("timeout_seconds", 5.0)
    http = OfflineOutboundHttp(
        allow_private=allow_private, user_agent="Keel-Test/1", resolver=resolver, **options
    )
    async with http:
        yield http, resolver


@asynccontextmanager
async def two_loopback_servers() -> AsyncIterator[tuple[Server, Server]]:
    """A server on 127.0.0.1 and one on 127.0.0.2, on the same port."""
    for _ in range(20):  # bounded: another process may hold the port on 127.0.0.2
        async with serving("127.0.0.1") as first:
            try:
                async with serving("127.0.0.2", first.port) as second:
                    yield first, second
                    return
            except OSError:
                continue
    pytest.fail("found no port free on both 127.0.0.1 and 127.0.0.2")


async def test_a_name_that_rebinds_to_loopback_is_never_reached_the_checked_address_is() -> None:
    # The name answers a public address to the first lookup and 127.0.0.1 to any other.
    async with serving("127.0.0.1") as local, client([PUBLIC], ["127.0.0.1"]) as (http, names):
        with pytest.raises(RequestFailed, match="the tests never reach a public address"):
            await http.post(f"http://rebind.test:{local.port}/hook", body=b"{}", headers={})
        assert names.lookups == ["rebind.test"]
        assert http.sockets == [PUBLIC]
        assert local.hits == []


async def test_a_name_that_rebinds_after_the_webhook_was_saved_is_refused_at_delivery() -> None:
    async with serving("127.0.0.1") as local, client([PUBLIC], ["127.0.0.1"]) as (http, names):
        # The check when the webhook was saved: the name answered a public address.
        await resolve_destination("rebind.test", local.port, allow_private=False, resolver=names)
        # At delivery it answers loopback: the delivery's own answer is checked and refused.
        with pytest.raises(DestinationRefused) as caught:
            await http.post(f"http://rebind.test:{local.port}/hook", body=b"{}", headers={})
        assert caught.value.message == (
            f"'rebind.test' resolves to 127.0.0.1, a loopback address; {HINT}"
        )
        assert names.lookups == ["rebind.test", "rebind.test"]
        assert http.sockets == []
        assert local.hits == []


async def test_one_request_resolves_once_and_connects_to_the_address_it_checked() -> None:
    # The name answers 127.0.0.2 to the first lookup and 127.0.0.1 to any other: a client
    # that checked one answer and connected after a second lookup would reach 127.0.0.1.
    async with (
        two_loopback_servers() as (rebound, checked),
        client(["127.0.0.2"], ["127.0.0.1"], allow_private=True) as (http, names),
    ):
        response = await http.post(
            f"http://rebind.test:{checked.port}/hook", body=b"payload", headers={"x-a": "1"}
        )
        assert (response.status, response.body) == (200, b"ok")
        assert names.lookups == ["rebind.test"]
        assert rebound.hits == []
        (hit,) = checked.hits
        assert (hit.method, hit.path, hit.host) == ("POST", "/hook", f"rebind.test:{checked.port}")
        assert (hit.headers["x-a"], hit.headers["user-agent"]) == ("1", "Keel-Test/1")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_a_url_with_a_literal_private_address_is_refused_before_connecting(
    host: str,
) -> None:
    async with serving("127.0.0.1") as local, client(None) as (http, names):
        with pytest.raises(DestinationRefused) as caught:
            await http.post(f"http://{host}:{local.port}/", body=b"", headers={})
        assert "a loopback address" in caught.value.message
        assert caught.value.message.endswith(HINT)
        assert local.hits == []
        assert names.lookups == []


async def test_with_allow_private_local_servers_are_reached_by_name_and_by_address() -> None:
    async with (
        serving("127.0.0.1") as local,
        client(["127.0.0.1"], allow_private=True) as (
            http,
            _,
        ),
    ):
        for host in ("receiver.test", "127.0.0.1"):
            response = await http.post(f"http://{host}:{local.port}/", body=b"", headers={})
            assert response.status == 200
        assert [h.host for h in local.hits] == [
            f"receiver.test:{local.port}",
            f"127.0.0.1:{local.port}",
        ]


async def test_redirects_are_answers_not_followed() -> None:
    async with serving("127.0.0.1") as local, client(allow_private=True) as (http, _):
        local.answer = lambda: web.Response(status=307, headers={"Location": "/elsewhere"})
        response = await http.post(f"http://127.0.0.1:{local.port}/hook", body=b"", headers={})
        assert response.status == 307
        assert response.headers["location"] == "/elsewhere"
        assert [h.path for h in local.hits] == ["/hook"]


async def test_cookies_set_by_one_endpoint_are_never_sent() -> None:
    # A name, not an address: a cookie jar keeps cookies of names only.
    async with (
        serving("127.0.0.1") as local,
        client(["127.0.0.1"], allow_private=True) as (
            http,
            _,
        ),
    ):

        def with_cookie() -> web.Response:
            answer = web.Response(text="ok")
            answer.set_cookie("session", "tenant-a")
            return answer

        local.answer = with_cookie
        for _ in range(2):
            await http.post(f"http://receiver.test:{local.port}/", body=b"", headers={})
        assert [h.headers.get("cookie") for h in local.hits] == [None, None]


async def test_a_response_body_is_kept_up_to_the_bound() -> None:
    async with (
        serving("127.0.0.1") as local,
        client(allow_private=True, max_response_bytes=1000) as (http, _),
    ):
        local.answer = lambda: web.Response(body=b"x" * 1_000_000)
        response = await http.post(f"http://127.0.0.1:{local.port}/", body=b"", headers={})
        assert (response.status, response.body) == (200, b"x" * 1000)


async def test_tls_verifies_and_names_the_host_not_the_address() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.keel.test").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    async with serving("127.0.0.1", tls=server_tls) as local:

        def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            local.sni.append(name)

        server_tls.sni_callback = record_sni
        async with client(["127.0.0.1"], allow_private=True, ssl_context=client_tls) as (http, _):
            response = await http.post(
                f"https://hooks.keel.test:{local.port}/", body=b"", headers={}
            )
            assert response.status == 200
            # The certificate names the host, not 127.0.0.1: it verifies only by name.
            with pytest.raises(RequestFailed, match="Certificate"):
                await http.post(f"https://127.0.0.1:{local.port}/", body=b"", headers={})
    assert local.sni == ["hooks.keel.test", None]
    assert [h.host for h in local.hits] == [f"hooks.keel.test:{local.port}"]


async def test_failures_are_outbound_errors_that_say_why() -> None:
    async with (
        serving("127.0.0.1") as slow,
        client(None, allow_private=True, timeout_seconds=0.3) as (http, _),
    ):
        slow.hold = asyncio.Event()
        with pytest.raises(RequestFailed, match=r"^no answer within 0.3s$"):
            await http.post(f"http://127.0.0.1:{slow.port}/", body=b"", headers={})
    # The rest fail at once; with the default timeout a busy machine cannot turn a refused
    # connection into "no answer within 0.3s".
    async with client(None, allow_private=True) as (http, _):
        with pytest.raises(RequestFailed, match="ClientConnectorError"):
            await http.post(f"http://127.0.0.1:{free_port()}/", body=b"", headers={})
        with pytest.raises(DestinationUnresolvable, match=r"cannot resolve 'gone\.test'"):
            await http.post("http://gone.test/", body=b"", headers={})
        with pytest.raises(RequestFailed, match="not an http"):
            await http.post("ftp://files.test/", body=b"", headers={})
