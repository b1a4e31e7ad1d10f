"""The five tables of the original chat schema, with the keys it lacked.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("password", sa.String(255), nullable=False),
        sa.Column(
            "state",
            sa.Enum("online", "offline", name="user_state"),
            server_default="offline",
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_user"),
        sa.UniqueConstraint("name", name="uq_user_name"),
        **MYSQL,
    )
    op.create_table(
        "allgroup",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("groupname", sa.String(50), nullable=False),
        sa.Column("groupdesc", sa.String(200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_allgroup"),
        sa.UniqueConstraint("groupname", name="uq_allgroup_groupname"),
        **MYSQL,
    )
    op.create_table(
        "friend",
        sa.Column("userid", sa.Integer(), nullable=False),
        sa.Column("friendid", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["userid"], ["user.id"], name="fk_friend_userid_user", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["friendid"], ["user.id"], name="fk_friend_friendid_user", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("userid", "friendid", name="pk_friend"),
        **MYSQL,
    )
    op.create_table(
        "groupuser",
        sa.Column("groupid", sa.Integer(), nullable=False),
        sa.Column("userid", sa.Integer(), nullable=False),
        sa.Column("grouprole", sa.Enum("creator", "normal", name="group_role"), nullable=False),
        sa.ForeignKeyConstraint(
            ["groupid"], ["allgroup.id"], name="fk_groupuser_groupid_allgroup", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["userid"], ["user.id"], name="fk_groupuser_userid_user", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("groupid", "userid", name="pk_groupuser"),
        **MYSQL,
    )
    op.create_index("ix_groupuser_userid", "groupuser", ["userid"])
    op.create_table(
        "offlinemessage",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("userid", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False),
        sa.ForeignKeyConstraint(
            ["userid"], ["user.id"], name="fk_offlinemessage_userid_user", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_offlinemessage"),
        **MYSQL,
    )
    op.create_index("ix_offlinemessage_userid_id", "offlinemessage", ["userid", "id"])


def downgrade() -> None:
    # indexes go with their tables (MySQL refuses to drop one a foreign key uses)
    op.drop_table("offlinemessage")
    op.drop_table("groupuser")
    op.drop_table("friend")
    op.drop_table("allgroup")
    op.drop_table("user")
