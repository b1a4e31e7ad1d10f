"""The conversation log: conversation (a pair or a group, with its last
sequence number), message (one row per message, keyed by conversation and
sequence number) and convcursor (per user and conversation: delivered, read,
joined). docs/architecture.md, "The conversation log".

Existing data: every group gets its conversation and every member a cursor
at 0 (so a member receives every message of the log). `offlinemessage` is
left as it is: rows stored before this upgrade are handed over at login,
oldest first, exactly as before, and nothing new is written to it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "conversation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Enum("pair", "group", name="conversation_kind"), nullable=False),
        sa.Column("user_lo", sa.Integer(), nullable=True),
        sa.Column("user_hi", sa.Integer(), nullable=True),
        sa.Column("groupid", sa.Integer(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("member_epoch", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["user_lo"], ["user.id"], name="fk_conversation_user_lo_user", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_hi"], ["user.id"], name="fk_conversation_user_hi_user", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["groupid"], ["allgroup.id"], name="fk_conversation_groupid_allgroup", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_conversation"),
        sa.UniqueConstraint("user_lo", "user_hi", name="uq_conversation_user_lo_user_hi"),
        sa.UniqueConstraint("groupid", name="uq_conversation_groupid"),
        **MYSQL,
    )
    op.create_table(
        "message",
        sa.Column("conversation_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sender", sa.Integer(), nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.id"], name="fk_message_conversation_id_conversation",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name="pk_message"),
        **MYSQL,
    )
    op.create_index("ix_message_created", "message", ["created"])
    op.create_table(
        "convcursor",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("delivered_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("read_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("joined_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name="fk_convcursor_user_id_user", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.id"], name="fk_convcursor_conversation_id_conversation",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "conversation_id", name="pk_convcursor"),
        **MYSQL,
    )
    op.create_index("ix_convcursor_conversation_id", "convcursor", ["conversation_id"])
    # every existing group gets its conversation, every member a cursor
    op.execute(
        "INSERT INTO conversation (kind, groupid, last_seq, member_epoch) SELECT 'group', id, 0, 0 FROM allgroup"
    )
    op.execute(
        "INSERT INTO convcursor (user_id, conversation_id, delivered_seq, read_seq, joined_seq) "
        "SELECT gu.userid, c.id, 0, 0, 0 FROM groupuser gu JOIN conversation c ON c.groupid = gu.groupid"
    )


def downgrade() -> None:
    op.drop_table("convcursor")
    op.drop_table("message")
    op.drop_table("conversation")
