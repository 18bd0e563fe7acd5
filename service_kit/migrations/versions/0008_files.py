"""files: metadata, upload parts and usage of the file service

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def _id(name: str) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=36), nullable=False)


def upgrade() -> None:
    op.create_table(
        "files",
        _id("id"),
        _id("tenant_id"),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("declared_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("blob_key", sa.String(length=512), nullable=False),
        sa.Column("upload_offset", sa.BigInteger(), nullable=False),
        sa.Column("create_time", TIMESTAMP, nullable=False),
        sa.Column("expire_time", TIMESTAMP, nullable=True),
        sa.Column("ready_time", TIMESTAMP, nullable=True),
        sa.Column("delete_time", TIMESTAMP, nullable=True),
        sa.Column("purge_time", TIMESTAMP, nullable=True),
        sa.Column("thumbnail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_files_tenant_id_create_time_id"), ["tenant_id", "create_time", "id"]
        )
        batch_op.create_index(batch_op.f("ix_files_state_expire_time"), ["state", "expire_time"])
        batch_op.create_index(
            batch_op.f("ix_files_state_purge_time_delete_time"),
            ["state", "purge_time", "delete_time"],
        )

    op.create_table(
        "file_upload_parts",
        _id("tenant_id"),
        _id("file_id"),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("blob_key", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("file_id", "offset", name=op.f("pk_file_upload_parts")),
    )
    with op.batch_alter_table("file_upload_parts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_file_upload_parts_tenant_id"), ["tenant_id"])

    op.create_table(
        "file_usage",
        _id("tenant_id"),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_file_usage")),
    )


def downgrade() -> None:
    op.drop_table("file_usage")
    with op.batch_alter_table("file_upload_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_upload_parts_tenant_id"))
    op.drop_table("file_upload_parts")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_state_purge_time_delete_time"))
        batch_op.drop_index(batch_op.f("ix_files_state_expire_time"))
        batch_op.drop_index(batch_op.f("ix_files_tenant_id_create_time_id"))
    op.drop_table("files")
