"""Certificates made at test time (trustme) for Keel's own TLS: a CA, and certificates it
signs for 127.0.0.1 and localhost, written as the PEM files ``KEEL_TLS_*`` name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and its key, and the CA that signed it, as files."""

    ca: Path
    cert: Path
    key: Path

    def env(self, *, ca: bool = True, client_auth: bool = True) -> dict[str, str]:
        """``KEEL_TLS_*`` for a process serving this certificate; with ``ca``, trusting
        the CA (mutual TLS unless not ``client_auth``)."""
        env = {"KEEL_TLS_CERT": str(self.cert), "KEEL_TLS_KEY": str(self.key)}
        if ca:
            env |= {"KEEL_TLS_CA": str(self.ca), "KEEL_TLS_CLIENT_AUTH": str(int(client_auth))}
        return env


def write_tls_files(
    directory: Path,
    *,
    ca: trustme.CA | None = None,
    names: tuple[str, ...] = ("127.0.0.1", "localhost"),
    stem: str = "server",
) -> TlsFiles:
    """Under ``directory``: ``ca.pem`` (``ca``, or a new CA) and ``<stem>.pem`` /
    ``<stem>-key.pem``, a certificate for ``names`` that CA signed (good for a server and a
    client alike)."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = ca or trustme.CA()
    issued = authority.issue_cert(*names)
    files = TlsFiles(
        ca=directory / "ca.pem",
        cert=directory / f"{stem}.pem",
        key=directory / f"{stem}-key.pem",
    )
    authority.cert_pem.write_to_path(str(files.ca))
    issued.private_key_pem.write_to_path(str(files.key))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    return files
