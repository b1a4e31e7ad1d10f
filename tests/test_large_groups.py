"""Groups too large for part A's habits (docs/protocol.md section F, "A
large group"): a login that leaves the member lists out, the member list a
page at a time, and joins past `group_notices_live` that stay in the log
instead of being pushed to every member. On one node, and across two nodes
of a cluster (the joiner and the members on different nodes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gchat.client import Client
from tests.cluster_support import Cluster, RedisServer
from tests.support import ServerProcess, unique
from tests.test_friends import Person, Where

# the nodes push a join or leave live to groups of at most this many members
LIVE = 3


@pytest.fixture(scope="module", params=["one node", "two nodes"])
def nodes(request: pytest.FixtureRequest, mariadb: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    flags = ("--group-notices-live", str(LIVE))
    if request.param == "one node":
        node = ServerProcess(mariadb.create(), extra=flags).start()
        yield [node]
        node.stop()
    else:
        redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
        c = Cluster(mariadb.create(), redis_server)
        try:
            c.add_nodes(2, *flags)
            yield c.nodes
        finally:
            c.stop()
            redis_server.stop()


@pytest.fixture
def where(nodes: list[ServerProcess]) -> Iterator[Where]:
    with Where.on(nodes) as w:
        yield w


def group_of(where: Where, members: int) -> tuple[int, list[Person]]:
    """A group made by a person on node a, joined by others on node b."""
    people = [where.person("a")] + [where.person("b") for _ in range(members - 1)]
    gid = people[0].ok(7, groupname=unique("g"))["groupid"]
    for p in people[1:]:
        p.ok(8, groupid=gid)
    # the joins pushed (those that made the group at most LIVE members), read
    for j, joiner in enumerate(people[1:LIVE], start=1):
        for p in people[:j]:
            assert p.notice("group_join", groupid=gid)["user"]["id"] == joiner.id
    return gid, people


def test_a_login_can_leave_the_member_lists_out_and_get_the_counts(where: Where) -> None:
    gid, (owner, bob, carol) = group_of(where, 3)
    bob.ok(10)
    bob.w.send({"msgid": 1, "id": bob.id, "password": "pw", "group_members": False})
    (group,) = [json.loads(g) for g in bob.expect(lambda m: m["msgid"] == 2)["groups"]]
    assert group == {"id": gid, "groupname": group["groupname"], "groupdesc": "", "members": 3}
    # a part A login still lists every member, with their states
    carol.ok(10)
    carol.w.send({"msgid": 1, "id": carol.id, "password": "pw"})
    (group,) = [json.loads(g) for g in carol.expect(lambda m: m["msgid"] == 2)["groups"]]
    assert [json.loads(u)["id"] for u in group["users"]] == [owner.id, bob.id, carol.id]
    carol.ok(10)
    carol.w.send({"msgid": 1, "id": carol.id, "password": "pw", "group_members": "no"})
    assert carol.expect(lambda m: m["msgid"] == 2)["errno"] == 3


def test_the_member_list_pages_by_id(where: Where) -> None:
    gid, people = group_of(where, 4)
    ids = sorted(p.id for p in people)
    first = people[1].ok(29, groupid=gid, limit=3)
    assert [m["id"] for m in first["members"]] == ids[:3] and first["more"] is True
    assert {m["state"] for m in first["members"]} == {"online"}
    rest = people[1].ok(29, groupid=gid, after=ids[2], limit=3)
    assert [m["id"] for m in rest["members"]] == ids[3:] and rest["more"] is False
    # without after or limit: the whole list, as before (no `more`)
    assert "more" not in people[1].ok(29, groupid=gid)
    assert people[1].errno(29, groupid=gid, limit=1001) == 3
    outsider = where.person("a")
    assert outsider.errno(29, groupid=gid, after=0) == 6
    assert outsider.errno(29, groupid=gid + 1000, after=0) == 7


def test_a_join_past_the_setting_is_in_the_log_but_pushed_to_nobody(where: Where) -> None:
    gid, (owner, bob, carol) = group_of(where, LIVE)
    dave = where.person("a")
    dave.ok(8, groupid=gid)  # the group now has LIVE + 1 members
    # the next message reaches everyone (the notice's number opened a gap
    # in each session, read from the log), the notice itself nobody
    owner.ok(9, groupid=gid, msg="after dave")
    for p in (bob, carol, dave):
        assert p.expect(lambda m: m["msgid"] == 9)["msg"] == "after dave"
    for p in (owner, bob, carol):
        p.quiet()
    # the notice is in the group's log: history of a session with notices
    msgs = [json.loads(m) for m in bob.ok(16, groupid=gid)["msgs"]]
    joins = [m for m in msgs if m["msgid"] == 31]
    assert [(m["kind"], m["user"]["id"], m.get("live")) for m in joins][-3:] == [
        ("group_join", bob.id, None), ("group_join", carol.id, None), ("group_join", dave.id, False)]
    # a leave that leaves more than the setting is quiet too (dave's); one
    # that brings the group down to it is pushed again (erin's)
    erin = where.person("b")
    erin.ok(8, groupid=gid)
    dave.ok(25, groupid=gid)
    erin.ok(25, groupid=gid)
    for p in (owner, bob, carol):
        assert p.notice("group_leave", groupid=gid)["user"]["id"] == erin.id
        p.quiet()


def test_the_library_logs_in_without_member_lists_and_pages_them(nodes: list[ServerProcess],
                                                                 where: Where) -> None:
    gid, people = group_of(where, 3)
    node = nodes[-1]
    people[1].ok(10)
    with Client.connect(node.host, node.port) as c:
        (group,) = c.login(people[1].id, "pw", group_members=False).groups
        assert (group.id, group.size, group.members) == (gid, 3, ())
        assert [m.id for m in c.member_pages(gid, limit=2)] == sorted(p.id for p in people)
