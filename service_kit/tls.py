"""Keel's own TLS, in one place: what every listening port and every call between Keel
processes uses when ``KEEL_TLS_CERT``/``KEEL_TLS_KEY`` are set (:class:`TlsSettings`).

- :func:`bind_grpc_port`: a gRPC server's port, TLS with the process's certificate;
  under mutual TLS (``KEEL_TLS_CA``, unless ``KEEL_TLS_CLIENT_AUTH=0``) only clients with
  a certificate the CA signed get in.
- :func:`open_channel`: every channel from one Keel process to another (and from
  ``keel doctor``): TLS that trusts ``KEEL_TLS_CA`` (else the system's roots, or grpc's
  ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``) and, with ``KEEL_TLS_CA``, presents the process's
  certificate.
- :func:`server_ssl_context`: the bridge's ``wss://`` and the file service's ``https://``,
  which browsers reach: TLS with the process's certificate, never a client certificate.
- :func:`http_scheme`: ``https`` or ``http``, for the URLs Keel hands out.
- :func:`read_certificate`: what ``keel doctor`` says of the process's certificate.

With TLS unset everything is plaintext, as before. The files are read when a port is
bound or a channel opened: replacing a certificate takes a restart.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import grpc
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from service_kit.config import TlsSettings

ChannelOption = tuple[str, Any]


def bind_grpc_port(server: grpc.aio.Server, address: str, tls: TlsSettings) -> int:
    """Bind ``address`` (``HOST:PORT``) on ``server``, with TLS when ``tls`` is enabled;
    return the port bound. grpc raises ``RuntimeError`` when it cannot."""
    if not tls.enabled:
        port: int = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
    return port


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """The process's certificate; under mutual TLS, client certificates required and
    checked against ``KEEL_TLS_CA``."""
    assert tls.cert is not None and tls.key is not None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.ca.read_bytes() if tls.mutual and tls.ca else None,
        require_client_auth=tls.mutual,
    )


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Trust ``KEEL_TLS_CA`` and present the process's certificate; without a CA, trust
    the system's roots and present none."""
    assert tls.cert is not None and tls.key is not None
    if tls.ca is None:
        return grpc.ssl_channel_credentials()
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )


def channel_options(tls: TlsSettings) -> list[ChannelOption]:
    """The options a TLS channel needs besides its credentials: the name to expect in the
    server's certificate when ``KEEL_TLS_SERVER_NAME`` is set."""
    if tls.enabled and tls.server_name:
        return [("grpc.ssl_target_name_override", tls.server_name)]
    return []


#: A Keel process that went away (a restart, a rolling update) is tried again within
#: 2 s, not after grpc's default backoff, which grows to 2 minutes: while a channel waits
#: for its next attempt every call on it fails at once (a browser's send with it).
RECONNECT_OPTIONS: Final[tuple[ChannelOption, ...]] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def open_channel(
    address: str, tls: TlsSettings, *, options: Sequence[ChannelOption] = ()
) -> grpc.aio.Channel:
    """A channel to the Keel process at ``address`` (``HOST:PORT``): secure with
    :func:`channel_credentials` when ``tls`` is enabled, plaintext otherwise; reconnecting
    quickly (:data:`RECONNECT_OPTIONS`)."""
    options = [*options, *RECONNECT_OPTIONS]
    if not tls.enabled:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(
        address, channel_credentials(tls), options=[*options, *channel_options(tls)]
    )


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The TLS of the ports browsers reach (the bridge, the file endpoints): the process's
    certificate, no client certificate asked for; None when TLS is off."""
    if not tls.enabled:
        return None
    assert tls.cert is not None and tls.key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context


def http_scheme(tls: TlsSettings) -> Literal["https", "http"]:
    """The scheme of the URLs of this process's HTTP ports (``wss``: see :func:`ws_scheme`)."""
    return "https" if tls.enabled else "http"


def ws_scheme(tls: TlsSettings) -> Literal["wss", "ws"]:
    """The scheme of the bridge's WebSocket URL."""
    return "wss" if tls.enabled else "ws"


@dataclass(frozen=True, slots=True)
class Certificate:
    """The facts of a certificate an operator checks before they bite."""

    #: Its subject alternative names (DNS names and IP addresses), as text.
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    #: Whether it may serve as a client certificate (mutual TLS): ``clientAuth`` among
    #: its extended key usages, or no such extension at all.
    client_auth: bool


def read_certificate(path: Path) -> Certificate:
    """The first certificate of the PEM chain at ``path``. Raises ``ValueError`` when it
    holds none (and ``OSError`` when it cannot be read)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        alternative = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(name.value) for name in alternative)
    except x509.ExtensionNotFound:
        names = ()
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    except x509.ExtensionNotFound:
        client_auth = True
    return Certificate(names, cert.not_valid_before_utc, cert.not_valid_after_utc, client_auth)
