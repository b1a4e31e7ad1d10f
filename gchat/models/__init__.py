"""The five tables of the original chat schema as typed SQLAlchemy 2.0
models, and the conversation log beside them (conversation, message, cursor)."""

from gchat.models.base import Base
from gchat.models.tables import AllGroup, Conversation, Cursor, Friend, GroupUser, Message, OfflineMessage, User

__all__ = ["Base", "User", "Friend", "AllGroup", "GroupUser", "OfflineMessage", "Conversation", "Message", "Cursor"]
