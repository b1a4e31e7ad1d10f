"""Alembic environment for gchat.

Run by `alembic upgrade head` (the URL then comes from GCHAT_DATABASE_URL) and
by the server itself, which hands over its own connection in
`config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from gchat import config as gconfig
from gchat.models import Base

target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.config.attributes.get("url") or gconfig.from_sources().sqlalchemy_url
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)


if context.is_offline_mode():
    raise SystemExit("gchat migrations run online only: set GCHAT_DATABASE_URL and run `alembic upgrade head`")
main()
