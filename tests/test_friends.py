"""Friends, presence and groups as people expect them (docs/protocol.md
section F), on real nodes: every test runs on one node, and across two
nodes of a cluster (one MariaDB, one Redis) with the two sides of each
exchange on different nodes."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.cluster_support import RedisServer, running_cluster, wait_until
from tests.support import ServerProcess, Wire, unique

Msg = dict[str, Any]
_seqs = itertools.count(1)


class Person:
    """A registered user logged in on its own connection; what the node
    pushes while it waits for a reply is kept in `inbox`."""

    def __init__(self, address: tuple[str, int], name: str | None = None, notices: bool = True) -> None:
        self.address = address
        self.name = name or unique("p")
        self.w = Wire(address)
        self.id = self.w.register(self.name)
        self.inbox: list[Msg] = []
        self.login_reply = self.log_in(notices)

    def log_in(self, notices: bool = True) -> Msg:
        req: Msg = {"msgid": 1, "id": self.id, "password": "pw"}
        if notices:
            req["notices"] = True
        self.w.send(req)
        return self._until(lambda m: m["msgid"] == 2)

    def call(self, msgid: int, **fields: Any) -> Msg:
        """Send a request with a seq; its reply (ACK_MSG)."""
        seq = next(_seqs)
        self.w.send({"msgid": msgid, "seq": seq, **fields})
        return self._until(lambda m: m.get("seq") == seq)

    def ok(self, msgid: int, **fields: Any) -> Msg:
        reply = self.call(msgid, **fields)
        assert reply["errno"] == 0, reply
        return reply

    def errno(self, msgid: int, **fields: Any) -> int:
        reply = self.call(msgid, **fields)
        assert reply["ack"] == msgid, reply
        return int(reply["errno"])

    def _until(self, match: Callable[[Msg], bool], timeout: float = 15.0) -> Msg:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame; got {self.inbox[-5:]}")
            m = self.w.recv(left)
            if match(m):
                return m
            self.inbox.append(m)

    def expect(self, match: Callable[[Msg], bool], timeout: float = 15.0) -> Msg:
        """A pushed frame that matches, already received or arriving."""
        for i, m in enumerate(self.inbox):
            if match(m):
                return self.inbox.pop(i)
        return self._until(match, timeout)

    def notice(self, kind: str, **fields: Any) -> Msg:
        return self.expect(lambda m: m["msgid"] == 31 and m["kind"] == kind
                           and all(m.get(k) == v for k, v in fields.items()))

    def presence(self, user_id: int, state: str) -> Msg:
        return self.expect(lambda m: m["msgid"] == 32 and m["id"] == user_id and m["state"] == state)

    def quiet(self, wait: float = 0.5) -> None:
        """Nothing pushed (beyond what was read already) within `wait`."""
        assert not self.inbox, self.inbox
        self.w.nothing(wait)

    def close(self) -> None:
        self.w.close()


class Where:
    """Where alice and bob connect: the same node, or two nodes."""

    def __init__(self, a: tuple[str, int], b: tuple[str, int], nodes: list[ServerProcess]) -> None:
        self.a, self.b, self.nodes = a, b, nodes
        self.people: list[Person] = []

    def person(self, side: str = "a", **kw: Any) -> Person:
        p = Person(self.a if side == "a" else self.b, **kw)
        self.people.append(p)
        return p

    @classmethod
    @contextmanager
    def on(cls, nodes: list[ServerProcess]) -> Iterator[Where]:
        """alice on the first node, bob on the last (the same one when there
        is one); everyone made here is closed afterwards."""
        w = cls(nodes[0].address, nodes[-1].address, nodes)
        try:
            yield w
        finally:
            for p in w.people:
                p.close()

    def pair(self) -> tuple[Person, Person]:
        return self.person("a"), self.person("b")

    def friends(self) -> tuple[Person, Person]:
        """alice and bob, friends both ways."""
        alice, bob = self.pair()
        alice.ok(20, to=bob.id)
        bob.notice("friend_request")
        bob.ok(21, **{"from": alice.id, "accept": True})
        alice.notice("friend_accepted")
        return alice, bob


@pytest.fixture(scope="module", params=["one node", "two nodes"])
def nodes(request: pytest.FixtureRequest, mariadb: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    if request.param == "one node":
        node = ServerProcess(mariadb.create()).start()
        yield [node]
        node.stop()
    else:
        redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
        with running_cluster(mariadb.create(), redis_server, 2) as c:
            yield c.nodes
        redis_server.stop()


@pytest.fixture
def where(nodes: list[ServerProcess]) -> Iterator[Where]:
    with Where.on(nodes) as w:
        yield w


# --- requests ------------------------------------------------------------------


def test_a_request_is_told_live_and_accepting_makes_friends_both_ways(where: Where) -> None:
    alice, bob = where.pair()
    assert alice.ok(20, to=bob.id, note="from the climbing club")["requested"] == {"id": bob.id, "name": bob.name}
    got = bob.notice("friend_request")
    assert got["from"] == {"id": alice.id, "name": alice.name} and got["note"] == "from the climbing club"
    reply = bob.ok(21, **{"from": alice.id, "accept": True})
    assert reply["friend"] == {"id": alice.id, "name": alice.name, "state": "online"}
    told = alice.notice("friend_accepted")
    assert told["friend"] == {"id": bob.id, "name": bob.name, "state": "online"}
    for p, other in ((alice, bob), (bob, alice)):
        p.ok(10)
        friends = [f for f in p.log_in()["friends"]]
        assert any(f'"id":{other.id}' in f for f in friends), friends


def test_a_request_to_someone_offline_waits_for_their_next_login_and_both_see_it_pending(where: Where) -> None:
    alice, bob = where.pair()
    bob.ok(10)
    alice.ok(20, to=bob.id, note="hi")
    assert bob.log_in()["requests"]["in"] == [{"id": alice.id, "name": alice.name, "note": "hi"}]
    alice.ok(10)
    assert alice.log_in()["requests"]["out"] == [{"id": bob.id, "name": bob.name, "note": "hi"}]
    bob.ok(10)
    classic = bob.log_in(notices=False)
    assert "requests" not in classic and "friends" not in classic


def test_declining_leaves_no_friendship_and_the_requester_is_not_told(where: Where) -> None:
    alice, bob = where.pair()
    alice.ok(20, to=bob.id)
    bob.notice("friend_request")
    bob.ok(21, **{"from": alice.id, "accept": False})
    alice.quiet()
    for p in (alice, bob):
        p.ok(10)
        reply = p.log_in()
        assert "friends" not in reply and reply["requests"] == {"in": [], "out": []}


def test_two_requests_that_cross_make_friends(where: Where) -> None:
    alice, bob = where.pair()
    alice.ok(20, to=bob.id)
    assert bob.ok(20, to=alice.id)["friend"]["id"] == alice.id
    assert alice.notice("friend_accepted")["friend"]["id"] == bob.id


# --- remove and block ----------------------------------------------------------


def test_removing_a_friend_removes_both_directions_and_tells_them(where: Where) -> None:
    alice, bob = where.friends()
    alice.ok(22, friendid=bob.id)
    assert bob.notice("friend_removed")["id"] == alice.id
    for p in (alice, bob):
        p.ok(10)
        assert "friends" not in p.log_in()


def test_a_blocked_user_cannot_chat_request_or_see_presence(where: Where) -> None:
    alice, bob = where.friends()
    bob.ok(23, userid=alice.id)
    assert alice.notice("friend_removed")["id"] == bob.id
    assert alice.errno(5, to=bob.id, msg="hello?") == 6
    assert alice.errno(20, to=bob.id) == 6
    assert alice.errno(6, friendid=bob.id) == 6
    bob.ok(10)
    alice.quiet()  # no presence of bob
    reply = bob.log_in()
    assert "offlinemsg" not in reply and reply["requests"]["in"] == [] and reply["blocked"] == [alice.id]
    alice.quiet()
    bob.ok(23, userid=alice.id, block=False)
    # another node learns of the unblock over the bus, a moment after bob's ACK
    wait_until(lambda: alice.call(5, to=bob.id, msg="again")["errno"] == 0, what="chat after unblock")
    assert bob.expect(lambda m: m["msgid"] == 5)["msg"] == "again"


# --- search ----------------------------------------------------------------------


def test_search_by_prefix_ignores_case_pages_and_shows_presence_of_friends_only(where: Where) -> None:
    stem = unique("Zq")
    alice = where.person("a", name=stem + "_Alice")
    bob = where.person("b", name=stem.lower() + "_bob")
    carol = where.person("b", name=stem.upper() + "_carol")
    alice.ok(20, to=bob.id)
    bob.ok(21, **{"from": alice.id, "accept": True})
    found = alice.ok(24, name=stem.upper())["users"]
    assert {u["id"] for u in found} == {alice.id, bob.id, carol.id}
    by_id = {u["id"]: u for u in found}
    assert by_id[bob.id] == {"id": bob.id, "name": bob.name, "state": "online"}
    assert "state" not in by_id[carol.id]
    pages = [alice.ok(24, name=stem, limit=2, page=n) for n in (0, 1)]
    assert [len(p["users"]) for p in pages] == [2, 1] and pages[0]["more"] and not pages[1]["more"]
    assert {u["id"] for p in pages for u in p["users"]} == {alice.id, bob.id, carol.id}
    assert alice.ok(24, name=stem + "%")["users"] == []  # wildcards are literal


# --- presence --------------------------------------------------------------------


def test_friends_see_login_logout_and_disconnect(where: Where) -> None:
    alice, bob = where.friends()
    alice.ok(10)
    bob.presence(alice.id, "offline")
    alice.log_in()
    bob.presence(alice.id, "online")
    alice.close()
    bob.presence(alice.id, "offline")


def test_a_classic_client_sees_none_of_it(where: Where) -> None:
    alice, bob = where.friends()
    bob.ok(10)
    bob.log_in(notices=False)
    alice.ok(10)
    alice.log_in()
    carol = where.person("a")
    carol.ok(20, to=bob.id)
    bob.quiet()


# --- misuse: the clear errno, one test each ----------------------------------------


def test_a_request_to_yourself_is_errno_3(where: Where) -> None:
    alice = where.person()
    assert alice.errno(20, to=alice.id) == 3


def test_a_request_to_an_unknown_user_is_errno_7(where: Where) -> None:
    assert where.person().errno(20, to=2_000_000_000) == 7


def test_a_request_to_a_friend_is_errno_8(where: Where) -> None:
    alice, bob = where.friends()
    assert alice.errno(20, to=bob.id) == 8


def test_a_second_request_is_errno_8(where: Where) -> None:
    alice, bob = where.pair()
    alice.ok(20, to=bob.id)
    assert alice.errno(20, to=bob.id) == 8


def test_answering_a_request_nobody_sent_is_errno_7(where: Where) -> None:
    alice, bob = where.pair()
    assert bob.errno(21, **{"from": alice.id, "accept": True}) == 7


def test_removing_someone_who_is_not_a_friend_is_errno_7(where: Where) -> None:
    alice, bob = where.pair()
    assert alice.errno(22, friendid=bob.id) == 7


def test_blocking_an_unknown_user_is_errno_7(where: Where) -> None:
    assert where.person().errno(23, userid=2_000_000_000) == 7


def test_a_search_page_over_50_is_errno_3(where: Where) -> None:
    assert where.person().errno(24, name="a", limit=51) == 3


def test_a_search_without_a_name_is_errno_3(where: Where) -> None:
    assert where.person().errno(24, name="  ") == 3


def test_a_note_over_the_limit_is_errno_3(where: Where) -> None:
    alice, bob = where.pair()
    assert alice.errno(20, to=bob.id, note="x" * 201) == 3


def test_a_request_before_login_is_errno_5(where: Where) -> None:
    with Wire(where.a) as w:
        reply = w.request({"msgid": 20, "to": 1, "seq": 1})
    assert reply["errno"] == 5


def test_a_request_in_someone_elses_name_is_errno_6(where: Where) -> None:
    alice, bob = where.pair()
    assert alice.errno(20, id=bob.id, to=bob.id) == 6


# --- groups ------------------------------------------------------------------------


def group_of(where: Where, members: int = 2) -> tuple[int, list[Person]]:
    """A group made by a person on node a, joined by others on node b."""
    people = [where.person("a")] + [where.person("b") for _ in range(members - 1)]
    gid = people[0].ok(7, groupname=unique("g"))["groupid"]
    for p in people[1:]:
        p.ok(8, groupid=gid)
    return gid, people


def test_members_are_told_of_joins_leaves_and_removals(where: Where) -> None:
    gid, (owner, bob) = group_of(where)
    assert owner.notice("group_join", groupid=gid)["user"] == {"id": bob.id, "name": bob.name}
    carol = where.person("a")
    carol.ok(8, groupid=gid)
    owner.notice("group_join", groupid=gid)
    bob.notice("group_join", groupid=gid)
    carol.ok(25, groupid=gid)
    for p in (owner, bob):
        assert p.notice("group_leave", groupid=gid)["user"]["id"] == carol.id
    owner.ok(26, groupid=gid, userid=bob.id)
    assert bob.notice("group_remove", groupid=gid)["user"]["id"] == bob.id
    assert bob.errno(9, groupid=gid, msg="still here?") == 6


def test_the_member_list_shows_states_and_roles(where: Where) -> None:
    gid, (owner, bob) = group_of(where)
    bob.ok(10)
    members = owner.ok(29, groupid=gid)["members"]
    assert members == [{"id": owner.id, "name": owner.name, "state": "online", "role": "creator"},
                       {"id": bob.id, "name": bob.name, "state": "offline", "role": "normal"}]


def test_the_creator_hands_the_group_over_and_the_new_one_deletes_it(where: Where) -> None:
    gid, (owner, bob, carol) = group_of(where, 3)
    owner.ok(27, groupid=gid, userid=bob.id)
    assert carol.notice("group_handover", groupid=gid)["creator"] == {"id": bob.id, "name": bob.name}
    assert owner.errno(28, groupid=gid) == 6
    owner.ok(25, groupid=gid)  # no longer the creator: may leave
    bob.ok(28, groupid=gid)
    assert carol.notice("group_delete", groupid=gid)["groupid"] == gid
    assert carol.errno(9, groupid=gid, msg="anyone?") == 7


def test_groups_are_found_by_name(where: Where) -> None:
    stem = unique("G")
    owner = where.person("a")
    gids = [owner.ok(7, groupname=f"{stem}-{n}", groupdesc="d")["groupid"] for n in range(3)]
    found = where.person("b").ok(30, name=stem.lower(), limit=2)
    assert [g["id"] for g in found["groups"]] == gids[:2] and found["more"]
    assert found["groups"][0] == {"id": gids[0], "groupname": f"{stem}-0", "groupdesc": "d", "members": 1}


def test_removing_a_member_by_someone_not_the_creator_is_errno_6(where: Where) -> None:
    gid, (owner, bob, carol) = group_of(where, 3)
    assert bob.errno(26, groupid=gid, userid=carol.id) == 6


def test_handing_over_to_someone_not_a_member_is_errno_7(where: Where) -> None:
    gid, (owner, _) = group_of(where)
    assert owner.errno(27, groupid=gid, userid=where.person("b").id) == 7


def test_leaving_a_group_one_is_not_in_is_errno_6(where: Where) -> None:
    gid, _ = group_of(where)
    assert where.person("b").errno(25, groupid=gid) == 6


def test_leaving_an_unknown_group_is_errno_7(where: Where) -> None:
    assert where.person().errno(25, groupid=2_000_000_000) == 7


def test_the_creator_leaving_is_errno_6(where: Where) -> None:
    gid, (owner, _) = group_of(where)
    assert owner.errno(25, groupid=gid) == 6


def test_the_member_list_for_a_non_member_is_errno_6(where: Where) -> None:
    gid, _ = group_of(where)
    assert where.person("b").errno(29, groupid=gid) == 6


def test_removing_yourself_as_creator_is_errno_3(where: Where) -> None:
    gid, (owner, _) = group_of(where)
    assert owner.errno(26, groupid=gid, userid=owner.id) == 3


def test_joining_twice_is_errno_8(where: Where) -> None:
    gid, (_, bob) = group_of(where)
    assert bob.errno(8, groupid=gid) == 8


# --- a node that dies ----------------------------------------------------------------


def test_friends_on_other_nodes_see_a_dead_nodes_users_go_offline(mariadb: Any,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        with running_cluster(mariadb.create(), redis_server, 2) as c:
            where = Where(c.nodes[0].address, c.nodes[1].address, c.nodes)
            alice, bob = where.friends()
            c.nodes[0].kill()
            bob.presence(alice.id, "offline")  # once the sweep finds the node dead
    finally:
        redis_server.stop()


# --- the classic ADD_FRIEND, by setting ------------------------------------------------


def test_classic_add_friend_is_one_way_at_once_by_default(where: Where) -> None:
    alice, bob = where.pair()
    assert alice.ok(6, friendid=bob.id)["friend"]["id"] == bob.id
    bob.quiet()


def test_a_setting_makes_classic_add_friend_a_request(make_server: Callable[..., ServerProcess]) -> None:
    node = make_server("--friend-requests", "true")
    where = Where(node.address, node.address, [node])
    alice, bob = where.pair()
    assert alice.ok(6, friendid=bob.id)["requested"]["id"] == bob.id
    bob.notice("friend_request")
    alice.ok(10)
    assert "friends" not in alice.log_in()
    for p in where.people:
        p.close()


def test_a_blocker_shows_offline_in_the_blocked_users_group_lists(where: Where) -> None:
    gid, (owner, bob) = group_of(where)
    owner.ok(23, userid=bob.id)
    bob.ok(10)
    (group,) = [json.loads(g) for g in bob.log_in()["groups"]]
    states = {json.loads(u)["id"]: json.loads(u)["state"] for u in group["users"]}
    assert states == {owner.id: "offline", bob.id: "online"}
    # another node learns of the block over the bus, a moment after the ACK
    wait_until(lambda: bob.ok(29, groupid=gid)["members"][0]["state"] == "offline", what="blocker offline")
    assert owner.ok(29, groupid=gid)["members"][1]["state"] == "online"
