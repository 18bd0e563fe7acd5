"""Alembic environment: migrations run on the connection :func:`service_kit.db.migrate` passes."""

from __future__ import annotations

from alembic import context

from service_kit.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
