"""The one database schema of Keel (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Each table belongs to one service (named in its comment); only that service
queries it. Every tenant-owned row carries ``tenant_id`` and every query of it
is scoped by it; every tenant-owned table has an index that starts with
``tenant_id``, which the purge of a deleted tenant deletes by
(:mod:`service_kit.purge`). Times are stored in UTC. Alembic migrations in
``service_kit/migrations/versions`` must produce exactly this schema (a test
compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSON documents: JSONB on PostgreSQL, JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)
# Ids Keel chooses are UUIDs; ids a tenant's app chooses (users) are up to 128 characters.
KeelId = String(36)
AppId = String(128)

# tenant_service: the tenants and their hashed credentials.
tenants = Table(
    "tenants",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("client_id", String(128), nullable=False, unique=True),
    Column("secret_hash", String(255), nullable=False),
    Column("permissions", Json, nullable=False),
    Column("rate_limit_rps", Integer, nullable=False, default=0),
    Column("rate_limit_burst", Integer, nullable=False, default=0),
    Column("allowed_origins", Json, nullable=False),
    Column("require_origin", Boolean, nullable=False, default=False),
    Column("metadata", Json, nullable=False, key="metadata_"),
    Column("request_id", String(128), nullable=True, unique=True),
    Column("create_time", Timestamp, nullable=False),
    Column("update_time", Timestamp, nullable=False),
    Column("secret_rotate_time", Timestamp, nullable=False),
)

# tenant_service: the record of each tenant's deletion; it outlives the tenant's row, which
# goes when the deletion starts. Written by service_kit/purge.py, read by the tenant service.
tenant_deletions = Table(
    "tenant_deletions",
    metadata,
    Column("tenant_id", KeelId, primary_key=True),
    Column("name", String(200), nullable=False),
    # "deleting" while the purge runs, then "purged".
    Column("state", String(16), nullable=False),
    # {table name: rows purged so far}, counted in the transaction of each batch.
    Column("purged_rows", Json, nullable=False),
    Column("start_time", Timestamp, nullable=False),
    Column("update_time", Timestamp, nullable=False),
    Column("finish_time", Timestamp, nullable=True),
)

# gateway_bridge: the seed's users, channels, messages and reactions, per tenant.
users = Table(
    "users",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("id", AppId, nullable=False),
    Column("username", String(255), nullable=False),
    Column("email", String(255), nullable=True),
    Column("avatar", Text, nullable=True),
    Column("metadata", Json, nullable=False, key="metadata_"),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant_id", "id"),
)

channels = Table(
    "channels",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("name", String(255), nullable=False),
    Column("type", String(16), nullable=False),
    Column("created_by", AppId, nullable=True),
    Column("metadata", Json, nullable=False, key="metadata_"),
    # For direct channels: the two member ids, sorted and joined, so the pair is unique.
    Column("direct_key", String(300), nullable=True),
    # The seq of the newest message; the next message takes last_seq + 1 in its transaction.
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("request_id", String(128), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("tenant_id", "direct_key"),
    UniqueConstraint("tenant_id", "request_id"),
    Index(None, "tenant_id", "created_at"),
)

channel_members = Table(
    "channel_members",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("channel_id", KeelId, ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("role", String(16), nullable=False),
    Column("last_read_seq", BigInteger, nullable=False, default=0),
    Column("joined_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("channel_id", "user_id"),
    Index(None, "tenant_id", "user_id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("channel_id", KeelId, ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("content", Text, nullable=False),
    Column("message_type", String(50), nullable=False, default="text"),
    Column("reply_to", KeelId, nullable=True),
    Column("attachment_ids", Json, nullable=False),
    # What each attached file was when attached: [{"file_id", "filename", "content_type",
    # "size_bytes", "thumbnail_width", "thumbnail_height"}], in attachment_ids order.
    Column("attachments", Json, nullable=False, server_default=text("'[]'")),
    Column("seq", BigInteger, nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    Column("edited", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("channel_id", "seq"),
    UniqueConstraint("channel_id", "idempotency_key"),
    Index(None, "channel_id", "reply_to", "seq"),
    Index(None, "tenant_id"),
)

reactions = Table(
    "reactions",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("message_id", KeelId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("emoji", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("message_id", "user_id", "emoji"),
    Index(None, "tenant_id"),
)

# gateway_bridge: which file is attached to which message (at ``position`` in its
# attachment_ids), written and removed with the message; found by file through the index.
message_attachments = Table(
    "message_attachments",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("channel_id", KeelId, nullable=False),
    Column("message_id", KeelId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("file_id", KeelId, nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("message_id", "file_id"),
    Index(None, "tenant_id", "file_id"),
)

# gateway_bridge: the event log, written in the same transaction as each change (an outbox).
# ``id`` is the log position (the cursor); ``published_at`` is set once the bus has it.
events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("event_id", KeelId, nullable=False, unique=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("channel_id", KeelId, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("name", String(64), nullable=False),
    Column("data", Json, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("published_at", Timestamp, nullable=True),
    # PostgreSQL: the inserting transaction's id (a column default set by migration 0003).
    # Readers order by (txid, id) and read only below the oldest running transaction, so a
    # late commit can never land behind a cursor. SQLite commits one writer at a time: 0.
    Column("txid", BigInteger, nullable=True),
    # Set once the webhook dispatcher has created this event's deliveries.
    Column("webhooks_done", Boolean, nullable=False, server_default=false()),
    Index(None, "tenant_id", "id"),
    Index(None, "published_at", "id"),
    Index(None, "webhooks_done", "id"),
    Index(None, "created_at"),
    # Never reuse an id, even after retention emptied the table (cursors must only grow).
    sqlite_autoincrement=True,
)

# gateway_bridge: webhook endpoints, their deliveries and every attempt.
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("url", String(2048), nullable=False),
    Column("events", Json, nullable=False),
    Column("channel_ids", Json, nullable=False),
    Column("description", String(500), nullable=False),
    Column("state", String(16), nullable=False),
    Column("disabled_reason", String(500), nullable=False),
    Column("secret", String(100), nullable=False),
    Column("previous_secret", String(100), nullable=True),
    Column("previous_secret_expires_at", Timestamp, nullable=True),
    Column("consecutive_failures", Integer, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index(None, "tenant_id", "created_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("webhook_id", KeelId, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event_id", KeelId, nullable=False),
    Column("event", String(64), nullable=False),
    # The request body without its timestamp: {"event", "event_id", "channel_id", "seq", "data"}.
    Column("payload", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempt_count", Integer, nullable=False),
    Column("next_attempt_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index(None, "status", "next_attempt_at"),
    Index(None, "webhook_id", "created_at"),
    Index(None, "tenant_id"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("delivery_id", KeelId, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("attempt_time", Timestamp, nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("error", String(1000), nullable=False),
    Index(None, "delivery_id", "attempt_time"),
    Index(None, "tenant_id"),
)

# The highest event-log id removed by retention: a cursor at or below it is too old.
event_log_horizon = Table(
    "event_log_horizon",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("removed_through", BigInteger, nullable=False),
)

# service_kit: the durable job queue (service_kit/jobs.py): background work any service
# enqueues in its own transaction, claimed by leased workers, and every attempt of each job.
jobs = Table(
    "jobs",
    metadata,
    Column("id", KeelId, primary_key=True),
    # Which handler runs it, e.g. "tenant.purge".
    Column("kind", String(64), nullable=False),
    # The tenant the work is for; None for installation-wide work (such as a tenant's purge).
    Column("tenant_id", KeelId, nullable=True),
    Column("payload", Json, nullable=False),
    # queued -> running -> succeeded | failed; running -> queued again for a retry.
    Column("state", String(16), nullable=False),
    # Claims so far; also the fencing token of the current claim.
    Column("attempts", Integer, nullable=False),
    # None: retried for ever.
    Column("max_attempts", Integer, nullable=True),
    # When a queued job becomes due (its first run, or its next retry).
    Column("run_after", Timestamp, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    # A running job whose lease has passed is due again (its worker died or lost the job).
    Column("lease_until", Timestamp, nullable=True),
    Column("last_error", String(1000), nullable=False),
    # Names the job so enqueueing it twice makes one job (None: no such name).
    Column("unique_key", String(200), nullable=True, unique=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=True),
    Index(None, "state", "run_after"),
    Index(None, "state", "lease_until"),
    Index(None, "finished_at"),
    Index(None, "tenant_id"),
)

job_attempts = Table(
    "job_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("job_id", KeelId, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", KeelId, nullable=True),
    # 1 for the first claim of the job, then 2, 3 ...
    Column("attempt", Integer, nullable=False),
    Column("worker", String(128), nullable=False),
    Column("start_time", Timestamp, nullable=False),
    Column("finish_time", Timestamp, nullable=True),
    # running | succeeded | failed | interrupted | lease_expired
    Column("outcome", String(16), nullable=False),
    Column("error", String(1000), nullable=False),
    UniqueConstraint("job_id", "attempt"),
    Index(None, "tenant_id"),
)

# notification_service: notifications, their deliveries per channel and every attempt.
# One row per recipient; ``send_id`` names the SendNotification call that made it and
# ``position`` its place in that call's answer. ``inbox_time`` is set once it is in the
# user's inbox (at once, or at its send_at); the inbox is ordered by it.
notifications = Table(
    "notifications",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("send_id", KeelId, nullable=False),
    Column("position", Integer, nullable=False),
    Column("category", String(64), nullable=False),
    Column("title", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("data", Json, nullable=False),
    # The channels asked for, by name ("in_app", "email", "webhook", "push").
    Column("channels", Json, nullable=False),
    Column("channel_id", KeelId, nullable=True),
    Column("create_time", Timestamp, nullable=False),
    Column("send_time", Timestamp, nullable=True),
    Column("inbox_time", Timestamp, nullable=True),
    Column("read_time", Timestamp, nullable=True),
    Index(None, "tenant_id", "user_id", "inbox_time", "id"),
    Index(None, "send_id", "position"),
)

# One row per notification and channel (per push subscription for push): its state
# (pending, sent, failed, skipped, held), why it is held (quiet, digest, scheduled) or
# failed or skipped, and the digest it waits for.
notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column(
        "notification_id",
        KeelId,
        ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("channel", String(16), nullable=False),
    Column("subscription_id", KeelId, nullable=True),
    Column("state", String(16), nullable=False),
    Column("hold", String(16), nullable=False),
    Column("error", String(1000), nullable=False),
    Column("digest_id", KeelId, nullable=True),
    Column("update_time", Timestamp, nullable=False),
    Index(None, "notification_id"),
    Index(None, "digest_id"),
    Index(None, "tenant_id"),
)

notification_attempts = Table(
    "notification_attempts",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column(
        "notification_id",
        KeelId,
        ForeignKey("notifications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("delivery_id", KeelId, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("target", String(2048), nullable=False),
    Column("attempt_time", Timestamp, nullable=False),
    Column("state", String(16), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("error", String(1000), nullable=False),
    Index(None, "notification_id", "attempt_time", "id"),
    Index(None, "tenant_id"),
)

# A SendNotification's request_id, and the send it made: a retry answers that send.
notification_requests = Table(
    "notification_requests",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("send_id", KeelId, nullable=False),
    # SHA-256 of what the request asked (notification_service.service.request_fingerprint):
    # the same request_id with other content is refused rather than answered with the first.
    Column("fingerprint", String(64), nullable=False, server_default=""),
    Column("create_time", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant_id", "request_id"),
)

# A user's preferences; no row means the defaults.
notification_preferences = Table(
    "notification_preferences",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("user_id", AppId, nullable=False),
    # Channel names; None: every channel.
    Column("enabled_channels", Json, nullable=True),
    Column("email", String(255), nullable=False),
    Column("webhook_url", String(2048), nullable=False),
    Column("webhook_secret", String(256), nullable=False),
    # "HH:MM" and an IANA zone; None: no quiet hours.
    Column("quiet_start", String(5), nullable=True),
    Column("quiet_end", String(5), nullable=True),
    Column("quiet_time_zone", String(64), nullable=True),
    # [{"category", "channel", "enabled"}]
    Column("rules", Json, nullable=False),
    Column("update_time", Timestamp, nullable=False),
    PrimaryKeyConstraint("tenant_id", "user_id"),
)

# A tenant's notification settings, one row per setting ("email_from",
# "category_defaults", "webhook": its URL and signing secret, "vapid": its key pair); the
# secret and the key pair are made at first use. ``update_time`` is None until the tenant
# changes the setting.
notification_tenant_settings = Table(
    "notification_tenant_settings",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", Json, nullable=False),
    Column("create_time", Timestamp, nullable=False),
    Column("update_time", Timestamp, nullable=True),
    PrimaryKeyConstraint("tenant_id", "name"),
)

# Browsers' Web Push subscriptions; an endpoint (by its SHA-256) belongs to one user.
push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("endpoint", String(2048), nullable=False),
    Column("endpoint_hash", String(64), nullable=False),
    Column("p256dh", String(128), nullable=False),
    Column("auth", String(64), nullable=False),
    Column("create_time", Timestamp, nullable=False),
    UniqueConstraint("tenant_id", "endpoint_hash"),
    Index(None, "tenant_id", "user_id", "create_time"),
)

# Digest windows: the first email or push of a (user, category, channel) with a digest
# window opens one; what follows within it waits for the one digest sent at its end.
# ``open_key`` names the (tenant, user, category, channel) while the window is open and is
# None once its digest ran, so at most one window of each is open.
notification_digests = Table(
    "notification_digests",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("category", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("open_key", String(300), nullable=True, unique=True),
    Column("start_time", Timestamp, nullable=False),
    Column("end_time", Timestamp, nullable=False),
    Index(None, "tenant_id"),
)

# file_service: every file's metadata, from its pending upload to the purge of its blobs.
# The gateway reads it too, only inside a send's transaction: an attachment must be a ready
# file of the sender's tenant, and the message keeps a copy of its metadata.
# ``size`` is the declared size while pending (0: not declared) and the real size once ready;
# ``upload_offset`` counts the bytes stored so far in ``file_upload_parts``. ``purge_time``
# is set once a deleted file's blobs are gone. ``thumbnail``: {"blob_key", "content_type",
# "width", "height", "size"}, or None.
files = Table(
    "files",
    metadata,
    Column("id", KeelId, primary_key=True),
    Column("tenant_id", KeelId, nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("declared_sha256", String(64), nullable=False),
    Column("user_id", AppId, nullable=False),
    Column("metadata", Json, nullable=False, key="metadata_"),
    # pending | ready | deleted
    Column("state", String(16), nullable=False),
    Column("blob_key", String(512), nullable=False),
    Column("upload_offset", BigInteger, nullable=False),
    Column("create_time", Timestamp, nullable=False),
    Column("expire_time", Timestamp, nullable=True),
    Column("ready_time", Timestamp, nullable=True),
    Column("delete_time", Timestamp, nullable=True),
    Column("purge_time", Timestamp, nullable=True),
    Column("thumbnail", Json, nullable=True),
    Index(None, "tenant_id", "create_time", "id"),
    Index(None, "state", "expire_time"),
    Index(None, "state", "purge_time", "delete_time"),
)

# The parts of pending uploads, each a blob of bytes [offset, offset + size). No foreign
# key: the file service removes a file's parts itself (when it becomes ready or is purged).
file_upload_parts = Table(
    "file_upload_parts",
    metadata,
    Column("tenant_id", KeelId, nullable=False),
    Column("file_id", KeelId, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("blob_key", String(512), nullable=False),
    PrimaryKeyConstraint("file_id", "offset"),
    Index(None, "tenant_id"),
)

# What each tenant's pending and ready files take, changed in the transaction that changes
# them, by conditional updates that refuse to pass the tenant's limits.
file_usage = Table(
    "file_usage",
    metadata,
    Column("tenant_id", KeelId, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("files", Integer, nullable=False),
)

#: Tables of the installation as a whole, without ``tenant_id``; every other table is
#: tenant-owned (see :func:`tenant_owned_tables`).
INSTALLATION_TABLES = frozenset({"tenants", "event_log_horizon"})


def tenant_owned_tables() -> list[Table]:
    """Every tenant-owned table (each carries ``tenant_id``), parents before children."""
    return [table for table in metadata.sorted_tables if table.name not in INSTALLATION_TABLES]
