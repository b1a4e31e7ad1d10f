"""The five tables of the original chat schema as typed SQLAlchemy 2.0
models, the conversation log beside them (conversation, message, cursor), and
the friends' tables gchat adds (friend requests, blocks)."""

from gchat.models.base import Base
from gchat.models.tables import (
    AllGroup,
    Block,
    Conversation,
    Cursor,
    Friend,
    FriendRequest,
    GroupUser,
    Message,
    OfflineMessage,
    User,
)

__all__ = ["Base", "User", "Friend", "AllGroup", "GroupUser", "OfflineMessage", "Conversation", "Message", "Cursor",
           "FriendRequest", "Block"]
