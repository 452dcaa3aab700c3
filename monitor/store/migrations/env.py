"""Alembic environment: run the migrations on the connection :mod:`monitor.store.schema` passes in.

Never run from an ``alembic.ini``: :func:`monitor.store.schema.upgrade_schema` builds the
Alembic config in code and hands over an open connection (``config.attributes``), so the
engine's settings (SQLite pragmas, a PostgreSQL ``search_path``) apply to migrations too
and the caller decides the transaction and its lock.

``target_metadata`` (every table of the store and the rollout) is only used by
autogenerate, when a developer writes a new revision (see ``README`` in this folder) and
by the test that checks the migrations end where the models are.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from monitor.store import cluster_tables as _cluster_tables  # noqa: F401  (register tables)
from monitor.store import tables as _store_tables  # noqa: F401
from rollout import tables as _rollout_tables  # noqa: F401

target_metadata = SQLModel.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through `monitor db upgrade` (monitor.store.schema), not the alembic command"
        )
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
