"""notifications: inboxes, deliveries, attempts, preferences, push subscriptions, digests

Also idempotent send requests and tenant settings (VAPID keys among them).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "notifications",
        _id("id"),
        _id("tenant_id"),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        _id("send_id"),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("channels", JSON, nullable=False),
        _id("channel_id", nullable=True),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("send_time", TIMESTAMP, nullable=True),
        sa.Column("inbox_time", TIMESTAMP, nullable=True),
        sa.Column("read_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notifications_tenant_id_user_id_inbox_time_id"),
            ["tenant_id", "user_id", "inbox_time", "id"],
        )
        batch_op.create_index(
            batch_op.f("ix_notifications_send_id_position"), ["send_id", "position"]
        )

    op.create_table(
        "notification_deliveries",
        _id("id"),
        _id("tenant_id"),
        _id("notification_id"),
        sa.Column("channel", sa.String(length=16), nullable=False),
        _id("subscription_id", nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("hold", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        _id("digest_id", nullable=True),
        sa.Column("update_time", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_notification_deliveries_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
    )
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_deliveries_notification_id"), ["notification_id"]
        )
        batch_op.create_index(batch_op.f("ix_notification_deliveries_digest_id"), ["digest_id"])
        batch_op.create_index(batch_op.f("ix_notification_deliveries_tenant_id"), ["tenant_id"])

    op.create_table(
        "notification_attempts",
        _id("id"),
        _id("tenant_id"),
        _id("notification_id"),
        _id("delivery_id"),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=2048), nullable=False),
        sa.Column("attempt_time", TIMESTAMP, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_notification_attempts_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_attempts")),
    )
    with op.batch_alter_table("notification_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_attempts_notification_id_attempt_time_id"),
            ["notification_id", "attempt_time", "id"],
        )
        batch_op.create_index(batch_op.f("ix_notification_attempts_tenant_id"), ["tenant_id"])

    op.create_table(
        "notification_requests",
        _id("tenant_id"),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        _id("send_id"),
        sa.Column("fingerprint", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "request_id", name=op.f("pk_notification_requests")),
    )

    op.create_table(
        "notification_preferences",
        _id("tenant_id"),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("enabled_channels", JSON, nullable=True),
        sa.Column("email", sa.String(length=255), nullable=False),
        sa.Column("webhook_url", sa.String(length=2048), nullable=False),
        sa.Column("webhook_secret", sa.String(length=256), nullable=False),
        sa.Column("quiet_start", sa.String(length=5), nullable=True),
        sa.Column("quiet_end", sa.String(length=5), nullable=True),
        sa.Column("quiet_time_zone", sa.String(length=64), nullable=True),
        sa.Column("rules", JSON, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "user_id", name=op.f("pk_notification_preferences")),
    )

    op.create_table(
        "notification_tenant_settings",
        _id("tenant_id"),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", JSON, nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("update_time", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_notification_tenant_settings")),
    )

    op.create_table(
        "push_subscriptions",
        _id("id"),
        _id("tenant_id"),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=2048), nullable=False),
        sa.Column("endpoint_hash", sa.String(length=64), nullable=False),
        sa.Column("p256dh", sa.String(length=128), nullable=False),
        sa.Column("auth", sa.String(length=64), nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_push_subscriptions")),
        sa.UniqueConstraint(
            "tenant_id", "endpoint_hash", name=op.f("uq_push_subscriptions_tenant_id_endpoint_hash")
        ),
    )
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_push_subscriptions_tenant_id_user_id_create_time"),
            ["tenant_id", "user_id", "create_time"],
        )

    op.create_table(
        "notification_digests",
        _id("id"),
        _id("tenant_id"),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("open_key", sa.String(length=300), nullable=True),
        sa.Column("start_time", TIMESTAMP, nullable=False),
        sa.Column("end_time", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_digests")),
        sa.UniqueConstraint("open_key", name=op.f("uq_notification_digests_open_key")),
    )
    with op.batch_alter_table("notification_digests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notification_digests_tenant_id"), ["tenant_id"])


def downgrade() -> None:
    with op.batch_alter_table("notification_digests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_digests_tenant_id"))
    op.drop_table("notification_digests")
    with op.batch_alter_table("push_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_subscriptions_tenant_id_user_id_create_time"))
    op.drop_table("push_subscriptions")
    op.drop_table("notification_tenant_settings")
    op.drop_table("notification_preferences")
    op.drop_table("notification_requests")
    with op.batch_alter_table("notification_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_attempts_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notification_attempts_notification_id_attempt_time_id"))
    op.drop_table("notification_attempts")
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_deliveries_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_notification_deliveries_digest_id"))
        batch_op.drop_index(batch_op.f("ix_notification_deliveries_notification_id"))
    op.drop_table("notification_deliveries")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_send_id_position"))
        batch_op.drop_index(batch_op.f("ix_notifications_tenant_id_user_id_inbox_time_id"))
    op.drop_table("notifications")
