"""``keel doctor`` against real parts: PostgreSQL, Redis, an S3 endpoint (moto), an SMTP
server (aiosmtpd), a running tenant service and gateway — and against each of them missing
or wrong, where its line must say FAIL and why, and the command exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keel_app.doctor import Check, diagnose
from service_kit import db
from tests.conftest import REDIS_URL, free_port
from tests.file_service.conftest import aws_env, moto_endpoint  # noqa: F401  (fixtures)
from tests.gateway_bridge.conftest import Keel, running_keel
from tests.notification_service.senders.conftest import Mailbox, smtp_server
from tests.tls_certs import write_tls_files

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _verdicts(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.verdict for check in checks}


def _detail(checks: list[Check], name: str) -> str:
    return next(check.detail for check in checks if check.name == name)


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str) -> str:  # noqa: F811
    name = f"keel-{uuid.uuid4().hex}"
    s3 = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def smtp() -> Iterator[str]:
    with smtp_server(Mailbox()) as server:
        yield f"smtp://127.0.0.1:{server.port}"


@pytest.fixture
async def keel(pg_url: str, tmp_path: Path) -> AsyncIterator[Keel]:
    async with running_keel(pg_url, tmp_path) as running:
        yield running


def _env(**changes: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "AWS_"))}
    base.pop("DATABASE_URL", None)
    base.pop("REDIS_URL", None)
    return base | AWS | changes


async def test_a_cluster_process_with_everything_in_place_passes(
    keel: Keel,
    pg_url: str,
    moto_endpoint: str,  # noqa: F811
    bucket: str,
    smtp: str,
    tmp_path: Path,
    aws_env: None,  # noqa: F811  (boto reads the credentials from the process's environment)
) -> None:
    env = _env(
        DATABASE_URL=pg_url,
        REDIS_URL=REDIS_URL,
        KEEL_DATA_DIR=str(tmp_path),
        KEEL_TENANT_SERVICE_ADDR=keel.address,
        KEEL_GATEWAY_ADDR=keel.address,
        KEEL_PEER_TOKEN="peer-token-0123456789",
        KEEL_TOKEN_SECRET="x" * 32,
        KEEL_S3_ENDPOINT_URL=moto_endpoint,
        KEEL_S3_BUCKET=bucket,
        KEEL_SMTP_URL=smtp,
    )
    checks = await diagnose(env, "notification-service")
    assert _verdicts(checks) == {
        "configuration": "ok",
        "tls certificate": "skip",
        "database": "ok",
        "migrations": "ok",
        "clock": "ok",
        "redis": "ok",
        "file storage": "ok",
        "smtp": "ok",
        "tenant service": "ok",
        "gateway": "ok",
        "notification service": "skip",
    }, checks
    assert _detail(checks, "file storage") == f"S3 bucket {bucket} is usable"


async def test_each_missing_part_is_a_failure_that_says_why(tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    database = tmp_path / "old.db"
    engine = db.create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        await db.migrate(engine, revision="0007")
    finally:
        await engine.dispose()
    env = _env(
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        REDIS_URL=f"redis://{closed}/0",
        KEEL_DATA_DIR=str(tmp_path),
        KEEL_S3_ENDPOINT_URL=f"http://{closed}",
        KEEL_S3_BUCKET="keel-nowhere",
        KEEL_SMTP_URL=f"smtp://{closed}",
        KEEL_GATEWAY_ADDR=closed,
        KEEL_TENANT_SERVICE_ADDR=closed,
    )
    checks = await diagnose(env)
    verdicts = _verdicts(checks)
    assert verdicts["configuration"] == "ok" and verdicts["database"] == "ok"
    for name in ("redis", "file storage", "smtp", "gateway", "tenant service"):
        assert verdicts[name] == "fail", (name, checks)
    # Pending migrations are applied by `keel migrate` or the first process to start.
    assert verdicts["migrations"] == "warn"
    assert "at 0007; 2 to apply (`keel migrate`" in _detail(checks, "migrations")
    assert "connection refused" in _detail(checks, "smtp").lower() or "cannot connect" in _detail(
        checks, "smtp"
    )
    assert verdicts["clock"] == "skip"  # SQLite


async def test_an_unreachable_database_and_bad_settings_are_named(tmp_path: Path) -> None:
    closed = free_port()
    checks = await diagnose(
        _env(
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/keel",
            KEEL_DATA_DIR=str(tmp_path),
        )
    )
    assert _verdicts(checks)["database"] == "fail"
    assert f"connection refused at 127.0.0.1:{closed}" in _detail(checks, "database")
    bad = await diagnose(_env(KEEL_GRPC_ADDR="nowhere", KEEL_FILES_ALLOWED_TYPES="images"))
    assert [c.verdict for c in bad] == ["fail", "fail"]
    assert "KEEL_GRPC_ADDR" in bad[0].detail and "KEEL_FILES_ALLOWED_TYPES" in bad[1].detail
    missing = await diagnose(_env(KEEL_DATA_DIR=str(tmp_path)), "bridge")
    assert {c.verdict for c in missing} == {"fail"}
    assert any("KEEL_GATEWAY_ADDR" in c.detail for c in missing)


def test_the_command_prints_a_table_and_exits_1_on_a_failure(tmp_path: Path) -> None:
    env = _env(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'var' / 'keel.db'}",
        KEEL_DATA_DIR=str(tmp_path / "var"),
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    keel = [sys.executable, "-m", "keel_app.cli", "doctor"]
    done = subprocess.run(keel, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["check", "verdict", "detail"]
    assert any(line.startswith("redis") and " FAIL " in line for line in lines), lines
    assert lines[-1] == "1 check(s) failed: redis"
    assert any("does not exist yet; the first start creates it" in line for line in lines)
    assert not (tmp_path / "var").exists()  # the doctor looks; it creates nothing

    del env["REDIS_URL"]
    again = subprocess.run(keel, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "Keel can run with this configuration."


async def test_the_tls_certificate_is_named_and_checked_for_expiry(tmp_path: Path) -> None:
    ca = trustme.CA()
    now = datetime.now(UTC)
    base = _env(KEEL_DATA_DIR=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}")

    async def line(**files: str) -> Check:
        checks = await diagnose(base | files)
        return next(check for check in checks if check.name == "tls certificate")

    assert (await line()).verdict == "skip"
    good = write_tls_files(tmp_path / "good", ca=ca, names=("gateway", "127.0.0.1"))
    ok = await line(**good.env())
    assert ok.verdict == "ok" and ok.detail.startswith("gateway, 127.0.0.1; valid until "), ok
    soon = ca.issue_cert("gateway", not_after=now + timedelta(days=3))
    soon.private_key_pem.write_to_path(str(good.key))
    soon.cert_chain_pems[0].write_to_path(str(good.cert))
    assert (await line(**good.env())).verdict == "warn"
    gone = ca.issue_cert(
        "gateway", not_before=now - timedelta(days=9), not_after=now - timedelta(1)
    )
    gone.private_key_pem.write_to_path(str(good.key))
    gone.cert_chain_pems[0].write_to_path(str(good.cert))
    expired = await line(**good.env())
    assert expired.verdict == "fail" and "valid from" in expired.detail
    server_only = _server_only_certificate(tmp_path / "server-only", ca)
    refused = await line(**server_only)
    assert refused.verdict == "fail" and "clientAuth" in refused.detail
    alone = await line(**(server_only | {"KEEL_TLS_CLIENT_AUTH": "0"}))  # nobody asks for it
    assert alone.verdict == "ok"


def _server_only_certificate(directory: Path, ca: trustme.CA) -> dict[str, str]:
    """``KEEL_TLS_*`` of a certificate ``ca`` signed for serverAuth only (trustme always
    adds clientAuth)."""
    directory.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    issuer_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("gateway")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    paths = {name: directory / f"{name}.pem" for name in ("cert", "key", "ca")}
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {f"KEEL_TLS_{name.upper()}": str(path) for name, path in paths.items()}
