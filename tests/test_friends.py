"""Friends, presence and groups as people expect them (docs/protocol.md
section E), on real nodes: every test runs on one node, and across two
nodes of a cluster (one MariaDB, one Redis) with the two sides of each
exchange on different nodes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster_support import Cluster, RedisServer, running_cluster
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
    w = Where(nodes[0].address, nodes[-1].address, nodes)
    yield w
    for p in w.people:
        p.close()


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
    assert alice.ok(5, to=bob.id, msg="again")["delivered"] == "online"


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
