from __future__ import annotations

from pathlib import Path

import pytest

from service_kit.config import Address, ConfigError, load_settings


def test_defaults_run_on_one_laptop() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite+aiosqlite:///var/keel.db"
    assert settings.redis_url is None
    assert settings.data_dir == Path("var")
    assert settings.grpc_addr == Address("127.0.0.1", 50051)
    assert settings.metrics_addr == Address("127.0.0.1", 9100)
    assert settings.ws_addr == Address("127.0.0.1", 8080)
    assert settings.auth_cache_seconds == 300


def test_database_urls_are_normalized_to_async_drivers() -> None:
    pg = load_settings({"DATABASE_URL": "postgres://u@db.example:5432/keel"})
    assert pg.database_url == "postgresql+asyncpg://u@db.example:5432/keel"
    lite = load_settings({"DATABASE_URL": "sqlite:////tmp/x.db"})
    assert lite.database_url == "sqlite+aiosqlite:////tmp/x.db"


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "KEEL_GRPC_ADDR": "nonsense",
                "DATABASE_URL": "mysql://x/y",
                "REDIS_URL": "localhost:6379",
                "KEEL_SECRET_HASH_COST": "99",
                "KEEL_ADMIN_TOKEN": "short",
            }
        )
    message = str(caught.value)
    for name in (
        "KEEL_GRPC_ADDR",
        "DATABASE_URL",
        "REDIS_URL",
        "KEEL_SECRET_HASH_COST",
        "KEEL_ADMIN_TOKEN",
    ):
        assert name in message
    assert len(caught.value.problems) == 5


def test_the_job_lease_margin_is_read_and_bounded() -> None:
    assert load_settings({}).job_lease_margin_seconds == 30
    assert load_settings({"KEEL_JOB_LEASE_MARGIN_SECONDS": "2.5"}).job_lease_margin_seconds == 2.5
    for bad in ("0", "-1", "3601", "soon"):
        with pytest.raises(ConfigError) as caught:
            load_settings({"KEEL_JOB_LEASE_MARGIN_SECONDS": bad})
        assert "KEEL_JOB_LEASE_MARGIN_SECONDS" in str(caught.value)


def test_metrics_can_be_turned_off() -> None:
    assert load_settings({"KEEL_METRICS_ADDR": "off"}).metrics_addr is None


def test_containers_can_listen_on_all_interfaces() -> None:
    settings = load_settings({"KEEL_GRPC_ADDR": "0.0.0.0:7000", "KEEL_WS_ADDR": "[::]:8081"})
    assert str(settings.grpc_addr) == "0.0.0.0:7000"
    assert str(settings.ws_addr) == "[::]:8081"


def test_notification_settings_are_read_and_checked() -> None:
    settings = load_settings(
        {
            "KEEL_SMTP_URL": "smtp://u:p@mail.example:587?starttls=1",
            "KEEL_SMTP_FROM": "Team <team@example.com>",
            "KEEL_PUBLIC_URL": "https://chat.example.com/",
            "KEEL_NOTIFICATION_SERVICE_ADDR": "notify:50051",
        }
    ).notifications
    assert settings.smtp_url == "smtp://u:p@mail.example:587?starttls=1"
    assert settings.smtp_from == "Team <team@example.com>"
    assert settings.public_url == "https://chat.example.com"
    assert settings.service_addr == "notify:50051"
    defaults = load_settings({}).notifications
    assert defaults.smtp_url is None and defaults.public_url is None
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "KEEL_SMTP_URL": "http://mail.example",
                "KEEL_SMTP_FROM": "nobody",
                "KEEL_PUBLIC_URL": "chat.example.com",
                "KEEL_VAPID_SUBJECT": "ops@example.com",
            }
        )
    assert len(caught.value.problems) == 4
    for name in ("KEEL_SMTP_URL", "KEEL_SMTP_FROM", "KEEL_PUBLIC_URL", "KEEL_VAPID_SUBJECT"):
        assert name in str(caught.value)


@pytest.mark.parametrize(
    "url", ["smtp://mail.example?tls=1", "smtps://mail.example?starttls=1", "smtp://m:99999"]
)
def test_a_bad_smtp_url_is_named_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="KEEL_SMTP_URL"):
        load_settings({"KEEL_SMTP_URL": url})


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("KEEL_SMTP_URL", "smtp://mailer:s3cret-Pa55@mail.example?tls=1"),
        ("DATABASE_URL", "mysql://keel:s3cret-Pa55@db.example/keel"),
        ("REDIS_URL", "http://default:s3cret-Pa55@cache.example:6379"),
    ],
)
def test_a_bad_url_is_named_without_its_password(name: str, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({name: url})
    message = str(caught.value)
    assert name in message and url.split("@")[1] in message  # which setting, which host
    assert "s3cret-Pa55" not in message


def test_files_default_to_a_directory_under_the_data_dir() -> None:
    files = load_settings({"KEEL_DATA_DIR": "/srv/keel"}).files
    assert (files.backend, files.local_dir) == ("local", Path("/srv/keel/files"))
    assert load_settings({"KEEL_FILES_DIR": "/mnt/blobs"}).files.local_dir == Path("/mnt/blobs")


def test_s3_settings_are_read_and_choose_s3() -> None:
    files = load_settings(
        {
            "KEEL_S3_ENDPOINT_URL": "http://minio.internal:9000/",
            "KEEL_S3_BUCKET": "keel-files",
            "KEEL_S3_REGION": "eu-west-3",
        }
    ).files
    assert files.backend == "s3"
    assert (files.s3_endpoint_url, files.s3_bucket, files.s3_region) == (
        "http://minio.internal:9000",
        "keel-files",
        "eu-west-3",
    )
    aws = load_settings({"KEEL_S3_BUCKET": "keel-files"}).files
    assert (aws.s3_endpoint_url, aws.s3_region) == (None, "us-east-1")


def test_bad_s3_settings_are_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "KEEL_S3_ENDPOINT_URL": "minio:9000",
                "KEEL_S3_BUCKET": "Keel_Files",
                "KEEL_S3_REGION": "EU West",
            }
        )
    assert len(caught.value.problems) == 3
    for name in ("KEEL_S3_ENDPOINT_URL", "KEEL_S3_BUCKET", "KEEL_S3_REGION"):
        assert name in str(caught.value)


def test_an_s3_endpoint_without_a_bucket_is_refused() -> None:
    with pytest.raises(ConfigError, match="KEEL_S3_BUCKET is not"):
        load_settings({"KEEL_S3_ENDPOINT_URL": "http://minio.internal:9000"})


def test_file_service_settings_are_read() -> None:
    files = load_settings(
        {
            "KEEL_FILES_HTTP_ADDR": "0.0.0.0:9000",
            "KEEL_FILES_PUBLIC_URL": "https://files.example.com",
            "KEEL_FILES_MAX_FILE_BYTES": "1048576",
            "KEEL_FILES_TENANT_MAX_BYTES": "2097152",
            "KEEL_FILES_TENANT_MAX_FILES": "7",
            "KEEL_FILES_ALLOWED_TYPES": "image/*, Application/PDF",
            "KEEL_FILES_CORS_ORIGINS": "https://app.example.com,http://localhost:3000",
            "KEEL_ATTACHMENT_URL_TTL_SECONDS": "600",
            "KEEL_S3_BUCKET": "keel-files",
            "KEEL_S3_PRESIGNED_DOWNLOADS": "1",
        }
    ).files
    assert files.http_addr == Address("0.0.0.0", 9000)
    assert files.public_url == "https://files.example.com"
    assert (files.max_file_bytes, files.tenant_max_bytes, files.tenant_max_files) == (
        1 << 20,
        2 << 20,
        7,
    )
    assert files.allowed_types == ("image/*", "application/pdf")
    assert files.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert files.attachment_url_ttl_seconds == 600
    assert files.s3_presigned_downloads


def test_bad_file_service_settings_are_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "KEEL_FILES_ALLOWED_TYPES": "images",
                "KEEL_FILES_CORS_ORIGINS": "app.example.com",
                "KEEL_FILES_MAX_FILE_BYTES": "0",
                "KEEL_ATTACHMENT_URL_TTL_SECONDS": "5",
                "KEEL_S3_PRESIGNED_DOWNLOADS": "1",
            }
        )
    for name in (
        "KEEL_FILES_ALLOWED_TYPES",
        "KEEL_FILES_CORS_ORIGINS",
        "KEEL_FILES_MAX_FILE_BYTES",
        "KEEL_ATTACHMENT_URL_TTL_SECONDS",
        "KEEL_S3_PRESIGNED_DOWNLOADS",
    ):
        assert name in str(caught.value)
