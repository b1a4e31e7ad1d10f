from __future__ import annotations

from sqlalchemy import BigInteger, Enum, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
# --- the conversation log (docs/architecture.md, "The conversation log") ---
#
# The log is the record: a chat message exists once its row is committed, and
# every delivery (live push, bus, login reply) can be repeated from it.


class Conversation(Base):
    """A pair of users (`user_lo` < `user_hi`) or a group (`groupid`), with
    the last sequence number handed out. `last_seq` is raised in the same
    transaction that inserts the messages, under the row's lock: numbers are
    gap-free and two nodes writing to one conversation are put in order.
    `member_epoch` rises with every membership change, under the same lock, so a writer
    holding an older member list sees that it must reload it."""

    __tablename__ = "conversation"
    __table_args__ = (
        UniqueConstraint("user_lo", "user_hi"),
        UniqueConstraint("groupid"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Enum("pair", "group", name="conversation_kind"))
    user_lo: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), nullable=True)
    user_hi: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), nullable=True)
    groupid: Mapped[int | None] = mapped_column(ForeignKey("allgroup.id", ondelete="CASCADE"), nullable=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    member_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Message(Base):
    """One row per message, whoever and however many receive it. `body` is
    the delivered JSON text (with its `conv`, `cseq` and `ts`), as a live
    push or a login reply hands it over; `created` is the server's time in
    Unix milliseconds (retention by age, the order of a classic backlog)."""

    __tablename__ = "message"
    __table_args__ = (Index(None, "created"), MYSQL_TABLE_ARGS)

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversation.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sender: Mapped[int] = mapped_column(Integer)
    created: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(MessageText)
    # "chat" (msgid 5 or 9) or "notice" (a group's membership notice, msgid
    # 31), so a hand-over can leave notices out for clients that did not ask
    # for them (docs/protocol.md section D); migration 0005
    kind: Mapped[str] = mapped_column(String(8), default="chat", server_default="chat")


class Cursor(Base):
    """Where one user is in one conversation. `delivered_seq`: everything up
    to it was handed over (a modern client acknowledged it; for a classic
    client the kernel took its last byte). `read_seq`: the user read up to
    it. `joined_seq`: the conversation's last_seq when the user joined (0
    for a pair): what came before is not the member's to read or receive."""

    __tablename__ = "convcursor"
    __table_args__ = (Index(None, "conversation_id"), MYSQL_TABLE_ARGS)

    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversation.id", ondelete="CASCADE"), primary_key=True
    )
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    read_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    joined_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
