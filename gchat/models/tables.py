from __future__ import annotations

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from gchat.models.base import MYSQL_TABLE_ARGS, Base

# SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid); BIGINT there
# would need explicit ids.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# A stored message is the delivered JSON text: up to 8,000 characters that may
# escape to several bytes each, past TEXT's 64 KiB on MySQL.
MessageText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class User(Base):
    __tablename__ = "user"
    __table_args__ = MYSQL_TABLE_ARGS

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    # an argon2id hash in PHC format, never the password itself
    password: Mapped[str] = mapped_column(String(255))
    # Mirrors presence for operators and the login ack; the truth across nodes
    # lives in the presence store (see gchat/cluster/presence.py).
    state: Mapped[str] = mapped_column(
        Enum("online", "offline", name="user_state"), default="offline", server_default="offline"
    )
    # The resume token (docs/protocol.md section C): its SHA-256 in hex, never
    # the token; and when it stops being accepted (Unix seconds). NULL: none.
    token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    token_expires: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Friend(Base):
    """One direction, as in the original: `friendid` is in `userid`'s list.
    An accepted friend request writes both directions."""

    __tablename__ = "friend"
    # who sees a user's presence is looked up by friendid: on MySQL the
    # foreign key's own index serves it
    __table_args__ = MYSQL_TABLE_ARGS

    userid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    friendid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)


class AllGroup(Base):
    __tablename__ = "allgroup"
    __table_args__ = MYSQL_TABLE_ARGS

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    groupname: Mapped[str] = mapped_column(String(50), unique=True)
    groupdesc: Mapped[str] = mapped_column(String(200), default="", server_default="")


class GroupUser(Base):
    __tablename__ = "groupuser"
    __table_args__ = (Index(None, "userid"), MYSQL_TABLE_ARGS)

    groupid: Mapped[int] = mapped_column(ForeignKey("allgroup.id", ondelete="CASCADE"), primary_key=True)
    userid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    grouprole: Mapped[str] = mapped_column(Enum("creator", "normal", name="group_role"))


class OfflineMessage(Base):
    __tablename__ = "offlinemessage"
    __table_args__ = (Index(None, "userid", "id"), MYSQL_TABLE_ARGS)

    # ordered key: stored messages come back oldest first
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    userid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    message: Mapped[str] = mapped_column(MessageText)


class FriendRequest(Base):
    """A pending friend request (docs/protocol.md section F): gone once
    accepted or declined."""

    __tablename__ = "friendrequest"
    __table_args__ = (Index(None, "toid"), MYSQL_TABLE_ARGS)

    fromid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    toid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    note: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created: Mapped[int] = mapped_column(BigInteger)  # Unix seconds


class Block(Base):
    """`userid` blocked `blockedid`: their chats and requests are refused."""

    __tablename__ = "block"
    __table_args__ = (Index(None, "blockedid"), MYSQL_TABLE_ARGS)

    userid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    blockedid: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
