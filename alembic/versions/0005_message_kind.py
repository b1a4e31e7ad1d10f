"""message.kind: what a log entry is. "chat" (msgid 5 or 9, as before) or
"notice" (a group's membership notice, msgid 31: docs/protocol.md sections D
and F), so the queries that hand entries over can leave notices out for the
clients that did not ask for them. Existing rows are chats (the default).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a column in place (add_column it can,
    # but the same code then serves downgrade's drop too)
    with op.batch_alter_table("message") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), server_default="chat", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_column("kind")
