"""Friend requests and blocks (docs/protocol.md section F): a pending request
with its note, and who blocked whom. Both go with either user (ON DELETE
CASCADE), so deleting a user leaves none of them behind.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
# 0003 (the conversation log) had not landed when this was written; the
# chain is fixed at merge
down_revision = "0003"
branch_labels = None
depends_on = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "friendrequest",
        sa.Column("fromid", sa.Integer(), nullable=False),
        sa.Column("toid", sa.Integer(), nullable=False),
        sa.Column("note", sa.String(200), server_default="", nullable=False),
        sa.Column("created", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["fromid"], ["user.id"], name=op.f("fk_friendrequest_fromid_user"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["toid"], ["user.id"], name=op.f("fk_friendrequest_toid_user"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("fromid", "toid", name=op.f("pk_friendrequest")),
        **MYSQL,
    )
    op.create_index(op.f("ix_friendrequest_toid"), "friendrequest", ["toid"])
    op.create_table(
        "block",
        sa.Column("userid", sa.Integer(), nullable=False),
        sa.Column("blockedid", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["userid"], ["user.id"], name=op.f("fk_block_userid_user"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["blockedid"], ["user.id"], name=op.f("fk_block_blockedid_user"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("userid", "blockedid", name=op.f("pk_block")),
        **MYSQL,
    )
    op.create_index(op.f("ix_block_blockedid"), "block", ["blockedid"])


def downgrade() -> None:
    # the indexes go with their tables (MySQL refuses to drop one that a
    # foreign key needs)
    op.drop_table("block")
    op.drop_table("friendrequest")
