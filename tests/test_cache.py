"""gchat.cache: what is loaded once, what is loaded again, what is dropped."""

from __future__ import annotations

from gchat.cache import Cache


class Loads:
    """A loader that counts its calls."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.calls: list[int] = []

    def __call__(self, key: int):  # type: ignore[no-untyped-def]
        self.calls.append(key)
        return self.answer(key) if callable(self.answer) else self.answer


def test_a_user_seen_once_is_not_loaded_again() -> None:
    cache, load = Cache(), Loads(True)
    assert cache.user_exists(7, load) and cache.user_exists(7, load)
    assert load.calls == [7]


def test_a_missing_user_is_asked_again_and_registration_makes_it_known() -> None:
    cache, missing = Cache(), Loads(False)
    assert not cache.user_exists(8, missing) and not cache.user_exists(8, missing)
    assert missing.calls == [8, 8]  # it may register in the meantime
    cache.known_user(8)
    assert cache.user_exists(8, missing) and missing.calls == [8, 8]


def test_members_are_loaded_once_until_invalidated() -> None:
    cache, load = Cache(), Loads([1, 2])
    assert cache.members(5, load) == (1, 2)
    assert cache.members(5, load) == (1, 2)
    assert load.calls == [5]
    cache.invalidate_group(5)
    load.answer = [1, 2, 3]
    assert cache.members(5, load) == (1, 2, 3)
    assert load.calls == [5, 5]


def test_invalidating_one_group_keeps_the_others() -> None:
    cache, load = Cache(), Loads(lambda gid: [gid])
    cache.members(1, load), cache.members(2, load)
    cache.invalidate_group(1)
    cache.members(1, load), cache.members(2, load)
    assert load.calls == [1, 2, 1]


def test_a_missing_group_is_not_remembered() -> None:
    cache, load = Cache(), Loads([])
    assert cache.members(9, load) == () and cache.members(9, load) == ()
    assert load.calls == [9, 9]  # it may be created next


def test_a_load_overtaken_by_an_invalidation_is_used_once_not_kept() -> None:
    cache = Cache()

    def load(gid: int) -> list[int]:
        cache.invalidate_group(gid)  # a join lands while the load waits on the database
        return [1]

    assert cache.members(4, load) == (1,)
    again = Loads([1, 2])
    assert cache.members(4, again) == (1, 2) and again.calls == [4]
    # and so is one overtaken by a later invalidation (each one counts)
    cache.invalidate_group(4)
    assert cache.members(4, load) == (1,)
    assert cache.members(4, again) == (1, 2) and again.calls == [4, 4]


def test_the_oldest_group_makes_room_past_the_bound() -> None:
    cache, load = Cache(max_groups=2), Loads(lambda gid: [gid])
    for gid in (1, 2, 3):
        cache.members(gid, load)
    cache.members(3, load), cache.members(2, load)
    assert load.calls == [1, 2, 3]  # 2 and 3 were kept
    cache.members(1, load)
    assert load.calls == [1, 2, 3, 1]  # 1 was dropped


def test_after_a_bus_outage_every_group_is_loaded_again_but_users_are_kept() -> None:
    cache, members, users = Cache(), Loads(lambda gid: [gid]), Loads(True)
    cache.members(1, members), cache.members(2, members), cache.user_exists(3, users)
    cache.forget_groups()
    cache.members(1, members), cache.members(2, members), cache.user_exists(3, users)
    assert members.calls == [1, 2, 1, 2]
    assert users.calls == [3]  # users are never deleted: that set stays valid
