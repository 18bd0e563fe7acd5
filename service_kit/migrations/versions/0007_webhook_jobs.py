"""webhook deliveries on the job queue: a job for every pending delivery

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)

#: The job kind that carries a delivery (gateway_bridge/gateway/events/store/delivery_jobs.py).
DELIVERY_JOB = "webhook.delivery"
BATCH = 1000

deliveries = sa.table(
    "deliveries",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("status", sa.String),
    sa.column("next_attempt_at", TIMESTAMP),
)
jobs = sa.table(
    "jobs",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("payload", JSON),
    sa.column("state", sa.String),
    sa.column("attempts", sa.Integer),
    sa.column("max_attempts", sa.Integer),
    sa.column("run_after", TIMESTAMP),
    sa.column("last_error", sa.String),
    sa.column("unique_key", sa.String),
    sa.column("created_at", TIMESTAMP),
    sa.column("updated_at", TIMESTAMP),
)
job_attempts = sa.table("job_attempts", sa.column("job_id", sa.String))


def upgrade() -> None:
    # Until now the dispatcher claimed due rows of `deliveries` itself; from now on each
    # pending delivery is attempted through its job. Every delivery pending at the upgrade
    # gets one, due when the delivery is (a delivery leased by a gateway of the previous
    # version is due when that lease ends), so none is lost.
    connection = op.get_bind()
    now = datetime.now(UTC)
    after = ""
    while True:
        rows = connection.execute(
            sa.select(deliveries.c.id, deliveries.c.tenant_id, deliveries.c.next_attempt_at)
            .where(deliveries.c.status == "pending", deliveries.c.id > after)
            .order_by(deliveries.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        connection.execute(
            sa.insert(jobs),
            [
                {
                    "id": str(uuid.uuid4()),
                    "kind": DELIVERY_JOB,
                    "tenant_id": row.tenant_id,
                    "payload": {"delivery_id": row.id},
                    "state": "queued",
                    "attempts": 0,
                    "max_attempts": None,
                    "run_after": row.next_attempt_at or now,
                    "last_error": "",
                    "unique_key": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for row in rows
            ],
        )
        after = rows[-1].id


def downgrade() -> None:
    # The previous version claims pending deliveries itself and knows no parked ones.
    chosen = sa.select(jobs.c.id).where(jobs.c.kind == DELIVERY_JOB)
    op.execute(sa.delete(job_attempts).where(job_attempts.c.job_id.in_(chosen)))
    op.execute(sa.delete(jobs).where(jobs.c.kind == DELIVERY_JOB))
    op.execute(
        sa.update(deliveries).where(deliveries.c.status == "parked").values(status="pending")
    )
