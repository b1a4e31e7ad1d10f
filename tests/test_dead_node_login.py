"""The window after a node dies, before its heartbeat expires: a login of
one of its users is refused (errno 2, as the claim still holds), and is told
that the other node stopped answering and when to try again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from gchat.client import AlreadyOnline
from gchat.client.screen import describe
from tests.cluster_support import Cluster, RedisServer, wait_until
from tests.support import Wire, user

# a TTL long enough to see the window under load, a heartbeat every second
SLOW_TTL = ("--node-ttl", "8", "--heartbeat-interval", "1")


@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    c = Cluster(mariadb.create(), redis_server, extra=SLOW_TTL)
    try:
        c.add_nodes(2)
        yield c
    finally:
        c.stop()


def login(address: tuple[str, int], user_id: int) -> dict[str, Any]:
    with Wire(address) as w:
        return w.request({"msgid": 1, "id": user_id, "password": "pw"})


def test_a_login_in_the_window_says_when_to_retry(cluster: Cluster) -> None:
    live, doomed = cluster.nodes
    w, uid = user(doomed.address)
    # held by a node that answers: the part A text, nothing more
    assert login(live.address, uid) == {"msgid": 2, "errno": 2, "errmsg": "id is online"}
    doomed.kill()
    w.close()

    def explained() -> str | None:
        reply = login(live.address, uid)
        assert reply["errno"] == 2, reply  # not free before the heartbeat expires
        return reply["errmsg"] if "stopped answering" in reply["errmsg"] else None

    errmsg = wait_until(explained, 10, every=0.2, what="a login told that the node stopped answering")
    found = re.fullmatch(r"id is online on a node that stopped answering (\d+) s ago; "
                         r"if it is dead, the id is free in (\d+) s: try again then", errmsg)
    assert found, errmsg
    silent, left = int(found[1]), int(found[2])
    assert 2 <= silent <= 8 and 0 <= left <= 6, errmsg
    shown = describe(AlreadyOnline(2, errmsg))
    assert shown.startswith("login failed: this user is already logged in elsewhere (on a node that stopped")
    # and it is free as said (a few seconds of slack for a loaded machine)
    wait_until(lambda: login(live.address, uid)["errno"] == 0, left + 10, every=0.5, what="free again")
