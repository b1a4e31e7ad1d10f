"""The web app in a real browser (headless Chromium, tests/browser_support.py):
people register, become friends (a request found by name, accepted), see each
other come and go, chat both ways and in a group, manage the group, block,
reload and find their conversation and what was sent while they were away,
scroll back through history; a browser chats with the terminal client's
library; the same through nginx over two nodes. Screenshots are taken on the way (GCHAT_SCREENSHOTS=docs/img keeps
them for the docs; otherwise they go to the test's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from gchat.client import Client
from tests.browser_support import Browser
from tests.cluster_support import Cluster, Nginx, RedisServer, running_cluster, wait_until
from tests.support import ServerProcess, unique


@pytest.fixture(scope="module")
def node(mariadb: Any) -> Iterator[ServerProcess]:
    proc = ServerProcess(mariadb.create()).start()
    yield proc
    proc.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("GCHAT_SCREENSHOTS") or tmp_path)


@pytest.fixture
def browsers() -> Iterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for b in opened:
        b.close()


def open_browser(browsers: list[Browser], url: str, **kw: Any) -> Browser:
    b = Browser(url, **kw)
    browsers.append(b)
    return b


def person(name: str) -> str:
    """A readable name (the screenshots show it) that no other test uses."""
    return f"{name} {unique('')[:-9]}"


def test_two_people_become_friends_and_chat_both_ways_and_in_a_group(
        node: ServerProcess, browsers: list[Browser], shots: Path) -> None:
    alice = open_browser(browsers, node.url)
    alice.visible("#register-name")
    alice.screenshot(shots / "signin.png")
    bob = open_browser(browsers, node.url)
    alice_id = alice.register(person("Alice"))
    bob_id = bob.register(person("Bob"))

    alice.request_friend(bob_id)
    bob.accept(alice_id)  # opens her conversation
    alice.wait(lambda d: alice.finds(f'.conv-item[data-key="u:{bob_id}"]'), "Bob in Alice's friends")
    alice.open(f"u:{bob_id}")
    alice.send("Hi Bob! Are we still on for Saturday?")
    # adding Alice opened her conversation at Bob's: the message appears there
    bob.wait_message("Hi Bob! Are we still on for Saturday?")
    assert bob.unread(f"u:{alice_id}") == 0
    bob.send("Yes! 10 am at the station.")
    alice.wait_message("Yes! 10 am at the station.")
    # delivered live: two ticks on Alice's message; with the conversation log
    # (docs/protocol.md section D) Bob's open conversation also reads it, and
    # the read receipt may already have turned them into the read mark
    alice.wait(lambda d: alice.finds('#message-list .msg.mine[data-status="delivered"], '
                                     '#message-list .msg.mine[data-status="read"]'), "delivered mark")
    alice.send("Great, see you there — à samedi")
    bob.wait_message("Great, see you there — à samedi")

    # a group: Alice creates it, Bob joins by its id, both write
    group_id = alice.create_group(f"Weekend trip {unique('')[:-9]}")
    alice.open(f"u:{bob_id}")  # back to Bob while the group is quiet
    bob.join_group(group_id)
    bob.open(f"g:{group_id}")
    bob.send("Joined! Who brings the map?")
    alice.wait(lambda d: alice.unread(f"g:{group_id}") == 1, "an unread badge on the group")
    alice.open(f"g:{group_id}")
    alice.wait_message("Joined! Who brings the map?")
    alice.send("I will. Bring snacks!")
    bob.wait_message("I will. Bring snacks!")
    # group messages show who wrote them
    assert any("Bob" in e.text for e in alice.finds("#message-list .sender"))
    alice.find("#members-button").click()
    alice.wait(lambda d: len(alice.finds("#member-list li")) == 2, "both members listed")
    alice.quiet()
    alice.screenshot(shots / "group.png")
    alice.find("#members-button").click()
    alice.open(f"u:{bob_id}")
    alice.quiet()
    alice.screenshot(shots / "chat.png")

    # Bob leaves the page; what Alice sends meanwhile waits for him
    bob.driver.get("about:blank")
    wait_until(lambda: state_of(node, bob_id) == "offline", what="Bob offline")
    alice.send("Bob, the train leaves from platform 4.")
    alice.wait(lambda d: alice.finds('#message-list .msg.mine[data-status="sent"]'), "stored, one tick")
    bob.driver.get(node.url)
    # back without typing the password (the resume token); the conversation
    # from before is there, and the new message with an unread badge
    bob.wait(lambda d: bob.connection() == "online", "Bob online again")
    bob.wait(lambda d: bob.unread(f"u:{alice_id}") == 1, "an unread badge for the message sent while away")
    bob.open(f"u:{alice_id}")
    bob.wait_message("Bob, the train leaves from platform 4.")
    assert "Hi Bob! Are we still on for Saturday?" in bob.messages()
    assert "Yes! 10 am at the station." in bob.messages()

    # a plain reload keeps everything too, and chat goes on both ways
    bob.reload()
    bob.wait(lambda d: bob.connection() == "online", "Bob online after the reload")
    bob.open(f"u:{alice_id}")
    bob.wait_message("Bob, the train leaves from platform 4.")
    bob.send("Got it, thanks!")
    alice.wait_message("Got it, thanks!")


def state_of(node: ServerProcess, user_id: int) -> str:
    """The user's state as the node mirrors it in the database."""
    engine = sqlalchemy.create_engine(node.database_url)
    try:
        with engine.connect() as c:
            return str(c.execute(sqlalchemy.text("select state from user where id = :id"), {"id": user_id}).scalar())
    finally:
        engine.dispose()


def test_a_narrow_window_shows_one_pane_at_a_time(node: ServerProcess, browsers: list[Browser], shots: Path) -> None:
    wide = open_browser(browsers, node.url)
    friend_id = wide.register(person("Dana"))
    phone = open_browser(browsers, node.url, width=400, height=780)
    me = phone.register(person("Chris"))
    wide.request_friend(me)
    phone.accept(friend_id)  # opens the conversation, alone on the screen
    phone.visible("#message-input")
    assert not phone.find(".sidebar").is_displayed()
    phone.find("#back").click()
    wide.wait(lambda d: wide.finds(f'.conv-item[data-key="u:{me}"]'), "the phone's user in the friends")
    wide.open(f"u:{me}")
    wide.send("Hello from a laptop")
    phone.wait(lambda d: phone.unread(f"u:{friend_id}") == 1, "an unread badge on the phone")
    assert not phone.find("#conversation").is_displayed()  # the list only
    phone.open(f"u:{friend_id}")
    assert not phone.find(".sidebar").is_displayed()  # the conversation only
    phone.wait_message("Hello from a laptop")
    phone.send("Hi! Replying from my phone")
    wide.wait_message("Hi! Replying from my phone")
    phone.quiet()
    phone.screenshot(shots / "narrow.png")
    phone.find("#back").click()
    phone.visible(".sidebar")


def test_a_browser_and_the_terminal_clients_library_chat(node: ServerProcess, browsers: list[Browser]) -> None:
    browser = open_browser(browsers, node.url)
    web_id = browser.register(person("Web"))
    with Client.connect(*node.address) as term:
        term_id = term.register(unique(), "pw")
        term.login(term_id, "pw")
        browser.request_friend(term_id)
        term.answer_request(web_id, True)
        browser.wait(lambda d: browser.finds(f'.conv-item[data-key="u:{term_id}"]'), "the terminal user a friend")
        browser.open(f"u:{term_id}")
        browser.send("hello terminal")
        got = term.next_message(timeout=20)
        assert got is not None and (got.text, got.sender_id) == ("hello terminal", web_id)
        assert term.chat(web_id, "hello browser") == "online"
        browser.wait_message("hello browser")


def test_connection_state_and_reconnect_when_the_node_restarts(
        tmp_path: Path, browsers: list[Browser]) -> None:
    node = ServerProcess(f"sqlite:///{tmp_path / 'n.db'}").start()
    try:
        b = open_browser(browsers, node.url)
        b.register(person("Eve"))
        node.stop()
        b.wait(lambda d: b.connection() == "offline", "the app shows it is disconnected")
        node.start()  # same ports: the app comes back by itself, still signed in
        b.wait(lambda d: b.connection() == "online", "reconnected", timeout=60)
        assert b.find("#me-id").is_displayed()
    finally:
        node.stop()


# --- through nginx, over two nodes ------------------------------------------

@pytest.fixture(scope="module")
def cluster(mariadb: Any, redis_server: RedisServer) -> Iterator[Cluster]:
    with running_cluster(mariadb.create(), redis_server, 2) as c:
        yield c


@pytest.fixture(scope="module")
def nginx(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proxy = Nginx([n.address for n in cluster.nodes], Path(tmp_path_factory.mktemp("nginx")),
                  web_upstreams=[n.web_address for n in cluster.nodes]).start()
    yield proxy
    proxy.stop()


def test_through_nginx_a_browser_on_one_node_chats_with_a_tcp_client_on_another(
        cluster: Cluster, nginx: Nginx, browsers: list[Browser]) -> None:
    browser = open_browser(browsers, nginx.url)
    web_id = browser.register(person("Proxied"))
    web_node = wait_until(lambda: cluster.owner(web_id), what="the browser's user online")
    # TCP clients through nginx until one lands on the other node
    clients: list[Client] = []
    try:
        for _ in range(8):
            c = Client.connect(*nginx.address)
            clients.append(c)
            uid = c.register(unique(), "pw")
            c.login(uid, "pw")
            if cluster.owner(uid) != web_node:
                term, term_id = c, uid
                break
        else:
            raise AssertionError("nginx never sent a TCP client to the other node")
        browser.request_friend(term_id)
        term.answer_request(web_id, True)  # on the other node: the browser is told through Redis
        browser.wait(lambda d: browser.finds(f'.conv-item[data-key="u:{term_id}"]'), "the TCP user a friend")
        browser.open(f"u:{term_id}")
        browser.send("across the cluster")
        got = term.next_message(timeout=20)
        assert got is not None and got.text == "across the cluster"
        assert term.chat(web_id, "right back at you") == "online"
        browser.wait_message("right back at you")
        # and a second browser, through the same nginx, chats with the first
        other = open_browser(browsers, nginx.url)
        other_id = other.register(person("Second"))
        other.request_friend(web_id)
        browser.accept(other_id)
        other.wait(lambda d: other.finds(f'.conv-item[data-key="u:{web_id}"]'), "accepted")
        other.open(f"u:{web_id}")
        other.send("two browsers, one proxy")
        browser.wait_message("two browsers, one proxy")  # accepting opened the conversation
    finally:
        for c in clients:
            c.close()
