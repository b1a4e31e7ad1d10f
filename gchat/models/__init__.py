"""The five tables of the original schema as typed SQLAlchemy 2.0 models."""

from gchat.models.base import Base
from gchat.models.tables import AllGroup, Friend, GroupUser, OfflineMessage, User

__all__ = ["Base", "User", "Friend", "AllGroup", "GroupUser", "OfflineMessage"]
