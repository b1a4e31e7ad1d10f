"""Hot reads kept in the node: which users exist, who is in which group.

Users are deleted only by an operator (gchat-admin delete-user), who tells
every node (gchat/control.py) to forget them; otherwise a user id once seen
stays valid. Group membership changes on join; the joining node drops its
entry and tells every other node through the bus to drop theirs, so a member
is missed at most for the time an invalidation takes to cross the bus.
"""

from __future__ import annotations

from collections.abc import Callable


class Cache:
    def __init__(self, max_groups: int = 100_000) -> None:
        self._users: set[int] = set()
        self._members: dict[int, tuple[int, ...]] = {}
        # user -> those it blocked: read by every chat to that user
        self._blocks: dict[int, frozenset[int]] = {}
        self._max_groups = max_groups
        # bumped by every invalidation: a load that an invalidation overtook
        # (the load yields on the database) is used once but not kept
        self._epoch = 0

    def user_exists(self, user_id: int, load: Callable[[int], bool]) -> bool:
        if user_id in self._users:
            return True
        if load(user_id):
            self._users.add(user_id)
            return True
        return False

    def known_user(self, user_id: int) -> None:
        self._users.add(user_id)

    def forget_users(self, user_ids: list[int]) -> None:
        """Deleted users: gone from the known users and from every cached
        group (rare enough to drop them all), or a group chat would try to
        store messages for them."""
        self._users.difference_update(user_ids)
        self.forget_groups()

    def members(self, group_id: int, load: Callable[[int], list[int]]) -> tuple[int, ...]:
        """The member ids of a group, empty for a group that does not exist
        (every group has at least its creator)."""
        cached = self._members.get(group_id)
        if cached is None:
            epoch = self._epoch
            cached = tuple(load(group_id))
            if cached and epoch == self._epoch:  # a missing group is not remembered: it may be created next
                if len(self._members) >= self._max_groups:
                    self._members.pop(next(iter(self._members)))
                self._members[group_id] = cached
        return cached

    def forget_groups(self) -> None:
        """Every group's members, and every user's blocks, are loaded afresh
        (invalidations may have been missed while the bus was down)."""
        self._epoch += 1
        self._members.clear()
        self._blocks.clear()

    def blocks(self, user_id: int, load: Callable[[int], list[int]]) -> frozenset[int]:
        """Those the user blocked (docs/protocol.md section F)."""
        cached = self._blocks.get(user_id)
        if cached is None:
            epoch = self._epoch
            cached = frozenset(load(user_id))
            if epoch == self._epoch:
                if len(self._blocks) >= self._max_groups:
                    self._blocks.pop(next(iter(self._blocks)))
                self._blocks[user_id] = cached
        return cached

    def invalidate_blocks(self, user_id: int) -> None:
        self._epoch += 1
        self._blocks.pop(user_id, None)

    def invalidate_group(self, group_id: int) -> None:
        self._epoch += 1
        self._members.pop(group_id, None)
