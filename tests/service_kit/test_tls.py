"""Keel's own TLS (service_kit/tls.py and ``KEEL_TLS_*`` in config.py), with certificates
made at test time: the settings and their errors, then a real gRPC server on port 0 behind
:func:`bind_grpc_port` called through :func:`open_channel`, and a real TLS socket server
with :func:`server_ssl_context`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service_kit.config import ConfigError, FileSettings, TlsSettings, load_settings
from service_kit.file_links import files_base_url
from service_kit.tls import (
    bind_grpc_port,
    http_scheme,
    open_channel,
    server_ssl_context,
    ws_scheme,
)
from tests.tls_certs import TlsFiles, write_tls_files


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(tmp_path: Path, ca: trustme.CA) -> TlsFiles:
    return write_tls_files(tmp_path / "server", ca=ca)


@pytest.fixture
def client_files(tmp_path: Path, ca: trustme.CA) -> TlsFiles:
    return write_tls_files(tmp_path / "client", ca=ca, names=("keel-client",), stem="client")


def tls_of(env: Mapping[str, str]) -> TlsSettings:
    return load_settings(env).tls


# --- settings ---------------------------------------------------------------------------------


def test_without_tls_variables_keel_stays_plaintext() -> None:
    tls = load_settings({}).tls
    assert tls == TlsSettings() and not tls.enabled and not tls.mutual
    assert (http_scheme(tls), ws_scheme(tls)) == ("http", "ws")


def test_a_certificate_and_key_turn_tls_on_and_a_ca_makes_it_mutual(
    server_files: TlsFiles,
) -> None:
    one_way = tls_of(server_files.env(ca=False))
    assert one_way.enabled and not one_way.mutual
    assert (one_way.cert, one_way.key, one_way.ca) == (server_files.cert, server_files.key, None)
    assert (http_scheme(one_way), ws_scheme(one_way)) == ("https", "wss")
    mutual = tls_of(server_files.env() | {"KEEL_TLS_SERVER_NAME": "keel.internal"})
    assert mutual.mutual and mutual.ca == server_files.ca
    assert mutual.server_name == "keel.internal"
    trusting = tls_of(server_files.env(client_auth=False))
    assert trusting.ca == server_files.ca and not trusting.mutual


@pytest.mark.parametrize(("given", "missing"), [("CERT", "KEY"), ("KEY", "CERT")])
def test_half_a_certificate_pair_is_named_at_start(
    server_files: TlsFiles, given: str, missing: str
) -> None:
    env = {f"KEEL_TLS_{given}": str(getattr(server_files, given.lower()))}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert caught.value.problems == [
        f"KEEL_TLS_{given} is set but KEEL_TLS_{missing} is not: set both to serve TLS"
    ]


def test_a_ca_server_name_or_client_auth_without_a_certificate_is_refused(
    server_files: TlsFiles,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "KEEL_TLS_CA": str(server_files.ca),
                "KEEL_TLS_SERVER_NAME": "keel.internal",
            }
        )
    assert [problem.split(" ")[0] for problem in caught.value.problems] == [
        "KEEL_TLS_CA",
        "KEEL_TLS_SERVER_NAME",
    ]
    with pytest.raises(ConfigError, match="KEEL_TLS_CLIENT_AUTH is on but KEEL_TLS_CA"):
        load_settings(server_files.env(ca=False) | {"KEEL_TLS_CLIENT_AUTH": "1"})


def test_a_file_that_cannot_be_read_is_named(server_files: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError) as caught:
        load_settings(server_files.env() | {"KEEL_TLS_KEY": str(missing)})
    assert caught.value.problems == [
        f"KEEL_TLS_KEY={str(missing)!r}: cannot read it: No such file or directory"
    ]


def test_a_key_of_another_certificate_is_refused(
    server_files: TlsFiles, client_files: TlsFiles
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(server_files.env() | {"KEEL_TLS_KEY": str(client_files.key)})
    (problem,) = caught.value.problems
    assert problem.startswith(f"KEEL_TLS_CERT={str(server_files.cert)!r} and KEEL_TLS_KEY=")
    assert "KEY_VALUES_MISMATCH" in problem


def test_files_that_are_not_pem_are_refused(server_files: TlsFiles, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(server_files.env() | {"KEEL_TLS_CA": str(junk), "KEEL_TLS_CERT": str(junk)})
    assert len(caught.value.problems) == 2
    assert "not a PEM certificate chain" in caught.value.problems[0]
    assert caught.value.problems[1].startswith(f"KEEL_TLS_CA={str(junk)!r}: holds no PEM CA")


def test_file_urls_say_https_when_tls_is_on() -> None:
    files = FileSettings()
    assert files_base_url(files, port=9443, https=True) == "https://127.0.0.1:9443"
    assert files_base_url(files) == "http://127.0.0.1:8090"
    public = replace(files, public_url="https://files.example.com")
    assert files_base_url(public, https=False) == "https://files.example.com"


# --- a real gRPC server -----------------------------------------------------------------------


@pytest.fixture
async def health_server(server_files: TlsFiles) -> AsyncIterator[tuple[int, int]]:
    """Two gRPC health servers on 127.0.0.1: TLS only, and mutual TLS; their ports."""
    servers, ports = [], []
    for env in (server_files.env(ca=False), server_files.env()):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        ports.append(bind_grpc_port(server, "127.0.0.1:0", tls_of(env)))
        await server.start()
        servers.append(server)
    yield ports[0], ports[1]
    for server in servers:
        await server.stop(None)


async def check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        async with channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_tls_port_answers_clients_that_trust_its_ca_and_refuses_plaintext(
    health_server: tuple[int, int], server_files: TlsFiles
) -> None:
    port, _ = health_server
    trusting = grpc.ssl_channel_credentials(root_certificates=server_files.ca.read_bytes())
    assert await check(grpc.aio.secure_channel(f"127.0.0.1:{port}", trusting)) == (
        grpc.StatusCode.OK
    )
    assert await check(grpc.aio.secure_channel(f"localhost:{port}", trusting)) == (
        grpc.StatusCode.OK
    )
    plaintext = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    assert await check(plaintext) == grpc.StatusCode.UNAVAILABLE
    other_ca = trustme.CA().cert_pem.bytes()
    stranger = grpc.ssl_channel_credentials(root_certificates=other_ca)
    assert await check(grpc.aio.secure_channel(f"127.0.0.1:{port}", stranger)) == (
        grpc.StatusCode.UNAVAILABLE
    )


async def test_mutual_tls_lets_in_only_clients_with_a_certificate_its_ca_signed(
    health_server: tuple[int, int], server_files: TlsFiles, client_files: TlsFiles
) -> None:
    _, port = health_server
    addr = f"127.0.0.1:{port}"
    assert await check(open_channel(addr, tls_of(client_files.env()))) == grpc.StatusCode.OK
    without_cert = grpc.ssl_channel_credentials(root_certificates=server_files.ca.read_bytes())
    assert await check(grpc.aio.secure_channel(addr, without_cert)) == (grpc.StatusCode.UNAVAILABLE)
    strangers = write_tls_files(client_files.cert.parent / "strangers", stem="stranger")
    signed_elsewhere = grpc.ssl_channel_credentials(
        root_certificates=server_files.ca.read_bytes(),
        private_key=strangers.key.read_bytes(),
        certificate_chain=strangers.cert.read_bytes(),
    )
    assert await check(grpc.aio.secure_channel(addr, signed_elsewhere)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert await check(open_channel(addr, TlsSettings())) == grpc.StatusCode.UNAVAILABLE


async def test_a_server_name_lets_clients_dial_an_address_the_certificate_does_not_name(
    tmp_path: Path, ca: trustme.CA, client_files: TlsFiles
) -> None:
    named = write_tls_files(tmp_path / "named", ca=ca, names=("keel.internal",))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = bind_grpc_port(server, "127.0.0.1:0", tls_of(named.env()))
    await server.start()
    try:
        addr = f"127.0.0.1:{port}"
        assert await check(open_channel(addr, tls_of(client_files.env()))) == (
            grpc.StatusCode.UNAVAILABLE
        )
        overridden = tls_of(client_files.env() | {"KEEL_TLS_SERVER_NAME": "keel.internal"})
        assert await check(open_channel(addr, overridden)) == grpc.StatusCode.OK
    finally:
        await server.stop(None)


# --- the ports browsers reach -----------------------------------------------------------------


async def test_the_browser_ports_serve_tls_without_asking_for_a_client_certificate(
    server_files: TlsFiles,
) -> None:
    context = server_ssl_context(tls_of(server_files.env()))
    assert context is not None and server_ssl_context(TlsSettings()) is None

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        browser = ssl.create_default_context(cafile=server_files.ca)
        reader, writer = await asyncio.open_connection("localhost", port, ssl=browser)
        assert await reader.readline() == b"hello\n"
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
