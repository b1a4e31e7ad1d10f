"""The five tables of the original schema as typed SQLAlchemy 2.0 models, and
those gchat adds (friend requests, blocks)."""

from gchat.models.base import Base
from gchat.models.tables import AllGroup, Block, Friend, FriendRequest, GroupUser, OfflineMessage, User

__all__ = ["Base", "User", "Friend", "AllGroup", "GroupUser", "OfflineMessage", "FriendRequest", "Block"]
