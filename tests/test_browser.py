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
    # Bob has the conversation open: he read it, and Alice's ticks light up
    alice.wait(lambda d: alice.finds('#message-list .msg.mine[data-status="read"]'), "read mark")
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
    assert any("Bob" in t for t in alice.texts("#message-list .sender"))
    alice.find("#members-button").click()
    alice.wait(lambda d: len(alice.finds("#member-list li")) == 2, "both members listed")
    alice.find("#members-button").click()
    # Bob leaves the group: it goes from his list, and Alice sees him go
    bob.conv_action("Leave group")
    bob.confirm()
    bob.wait(lambda d: not bob.finds(f'.conv-item[data-key="g:{group_id}"]'), "the group gone from Bob's list")
    alice.wait(lambda d: any("left the group" in e for e in alice.texts("#message-list .event")), "a line: Bob left")
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


def events(b: Browser) -> list[str]:
    """The neutral lines (joins, leaves, new friends) of the open conversation."""
    return b.texts("#message-list .event")


def member_states(b: Browser) -> dict[int, str]:
    return dict(zip((int(i) for i in b.attrs("#member-list li", "data-id")),
                    b.attrs("#member-list li", "data-state"), strict=False))


def test_a_friend_request_by_name_presence_and_a_group_managed_by_its_owner(
        node: ServerProcess, browsers: list[Browser], shots: Path) -> None:
    ann = open_browser(browsers, node.url)
    ben = open_browser(browsers, node.url)
    ann_name, ben_name = person("Ann"), person("Ben")
    ann_id = ann.register(ann_name)
    ben_id = ben.register(ben_name)

    # Ann finds Ben by the first letters of his name and asks, with a note
    ann.find_people(ben_name[:-2].lower())
    ann.visible(f'#finder-results li[data-id="{ben_id}"]')
    assert ann.unlabelled() == []
    ann.quiet()
    ann.screenshot(shots / "find.png")
    ann.close_finder()
    ann.request_friend(ben_id, query=ben_name, note="from the climbing club")
    ann.visible(f'#requests li[data-id="{ben_id}"][data-dir="out"]')  # waiting for his answer
    # Ben is told at once, with the note, and answers from the sidebar
    ben.wait(lambda d: any("from the climbing club" in t for t in ben.texts(f'#requests li[data-id="{ann_id}"]')),
             "Ann's request, with her note")
    ben.quiet()
    ben.screenshot(shots / "requests.png")
    assert ben.unlabelled() == []
    ben.accept(ann_id)
    assert "You are now friends" in events(ben)
    # Ann learns it by a pushed notice: Ben in her friends, online
    ann.wait(lambda d: ann.finds(f'.conv-item[data-key="u:{ben_id}"]'), "Ben in Ann's friends")
    assert not ann.finds(f'#requests li[data-id="{ben_id}"]')
    ann.wait(lambda d: ann.presence(ben_id) == "online", "Ben's dot online")

    # presence, pushed: Ben goes away, then comes back (the resume token)
    ben.driver.get("about:blank")
    ann.wait(lambda d: ann.presence(ben_id) == "offline", "Ben's dot offline once he left")
    ben.driver.get(node.url)
    ben.wait(lambda d: ben.connection() == "online", "Ben back")
    ann.wait(lambda d: ann.presence(ben_id) == "online", "Ben's dot online again")

    # a group: Ben finds it by name and joins; Ann sees him join, in the
    # conversation and in the member list with his state
    group_name = f"Crag {unique('')[:-9]}"
    group_id = ann.create_group(group_name)
    ben.join_group(group_id, query=group_name)
    ann.wait(lambda d: any("joined the group" in e for e in events(ann)), "a line: Ben joined")
    ann.find("#members-button").click()
    ann.wait(lambda d: member_states(ann) == {ann_id: "online", ben_id: "online"}, "both members, online")
    assert ann.attrs(f'#member-list li[data-id="{ann_id}"]', "data-role") == ["creator"]
    ben.open(f"g:{group_id}")
    ben.send("Hi all")
    ann.wait_message("Hi all")
    ann.quiet()
    ann.screenshot(shots / "group.png")
    assert ann.unlabelled() == []  # the member list with the owner's buttons, the conversation
    ben.driver.get("about:blank")
    ann.wait(lambda d: member_states(ann).get(ben_id) == "offline", "Ben offline in the member list")
    ben.driver.get(node.url)
    ben.wait(lambda d: ben.connection() == "online", "Ben back")
    ann.wait(lambda d: member_states(ann).get(ben_id) == "online", "Ben online in the member list")

    # the owner hands the group over; Ben sees it, and now owns it
    ann.click(f'#member-list li[data-id="{ben_id}"] .member-handover')
    ann.confirm()
    ann.wait(lambda d: ann.attrs(f'#member-list li[data-id="{ben_id}"]', "data-role") == ["creator"],
             "Ben the owner")
    ben.open(f"g:{group_id}")
    ben.wait(lambda d: any("are now the group's owner" in e for e in events(ben)), "Ben told he owns it")
    # the new owner removes Ann: she is told, and can no longer write there
    ben.find("#members-button").click()
    ben.click(f'#member-list li[data-id="{ann_id}"] .member-remove')
    ben.confirm()
    ben.wait(lambda d: set(member_states(ben)) == {ben_id}, "Ann gone from the member list")
    ann.wait(lambda d: "You were removed from the group" in events(ann), "Ann told she was removed")
    ann.wait(lambda d: ann.find("#composer-note").is_displayed() and not ann.find("#composer").is_displayed(),
             "no composer in a group Ann was removed from")
    ann.conv_action("Remove this conversation")
    ann.wait(lambda d: not ann.finds(f'.conv-item[data-key="g:{group_id}"]'), "the group gone from Ann's list")
    # the owner deletes it: nothing more can be written there
    ben.conv_action("Delete group")
    ben.confirm()
    ben.wait(lambda d: not ben.finds(f'.conv-item[data-key="g:{group_id}"]'), "the group deleted")


def test_a_blocked_user_can_no_longer_write(node: ServerProcess, browsers: list[Browser]) -> None:
    cat = open_browser(browsers, node.url)
    dan = open_browser(browsers, node.url)
    cat_id = cat.register(person("Cat"))
    dan_id = dan.register(person("Dan"))
    cat.request_friend(dan_id)
    dan.accept(cat_id)
    dan.send("hello Cat")
    cat.wait(lambda d: cat.unread(f"u:{dan_id}") == 1, "Dan's message")
    cat.open(f"u:{dan_id}")
    cat.wait_message("hello Cat")

    cat.conv_action("Block")
    cat.confirm()
    cat.visible("#composer-note")  # no composer: "You blocked Dan", and a way back
    assert not cat.find("#composer").is_displayed()
    # Dan loses her from his friends, and what he writes is refused
    dan.wait(lambda d: any("no longer in your friends" in e for e in events(dan)), "Dan told")
    box = dan.visible("#message-input")
    box.send_keys("are you there?")
    from selenium.webdriver.common.keys import Keys
    box.send_keys(Keys.ENTER)
    dan.wait(lambda d: dan.finds('#message-list .msg.mine[data-status="failed"]'), "Dan's message refused")
    assert "are you there?" not in cat.messages()
    # Cat unblocks: she can write again (they are no longer friends)
    cat.find("#composer-note-action").click()
    cat.visible("#message-input")
    cat.send("sorry, that was a mistake")
    dan.wait_message("sorry, that was a mistake")
    # she asks to be friends again; he declines, and the request is gone
    cat.request_friend(dan_id)
    dan.click(f'#requests li[data-id="{cat_id}"] .decline')
    dan.wait(lambda d: not dan.finds(f'#requests li[data-id="{cat_id}"]'), "the request gone once declined")
    assert dan.presence(cat_id) == "offline"  # no friends: her state is not shown, though she is online


@pytest.fixture
def small_sync_node(tmp_path: Path) -> Iterator[ServerProcess]:
    """A node whose sync login brings at most 100 messages: the rest is the
    client's to fetch through history (docs/protocol.md section D, "more")."""
    proc = ServerProcess(f"sqlite:///{tmp_path / 'sync.db'}", extra=["--sync-max", "100"]).start()
    yield proc
    proc.stop()


def test_history_loads_as_you_scroll_up_and_a_long_absence_arrives_whole(
        small_sync_node: ServerProcess, browsers: list[Browser]) -> None:
    node = small_sync_node
    count = 130  # more than this node's sync login brings at once (100)
    with Client.connect(*node.address) as web:
        web_id = web.register(person("Fay"), "secret")
    with Client.connect(*node.address) as term:
        term_id = term.register(unique(), "pw")
        term.login(term_id, "pw")
        for i in range(1, count + 1):
            term.chat(web_id, f"message {i}")
        (newest,) = term.history(to=web_id, limit=1)
        assert newest.conv is not None and newest.cseq == count
        b = open_browser(browsers, node.url)
        b.sign_in(web_id)
        item = f'.conv-item[data-key="u:{term_id}"]'
        b.wait(lambda d: f"{count} unread" in str(b.find(item).get_attribute("aria-label"))
               and b.text(".badge") == "99+", f"{count} unread, the badge capped")
        b.open(f"u:{term_id}")
        b.wait(lambda d: len(b.messages()) == count, "every message, the 30 after the sync's 100 too")
        assert b.messages()[-1] == f"message {count}"
        # the app says it read them (a read mark also moves the delivered
        # cursor) after it showed them: closed before the node has it, the
        # next browser would be handed them again at its sync, as it should
        # be (at least once), and find no history to page through. So wait
        # for what the sender sees: his last message read.
        wait_until(lambda: term.readers(newest.conv, count) == (1, 1), what="the sender sees all 130 read")
    b.close()
    browsers.remove(b)

    # a fresh browser: nothing is left to deliver, so the conversation comes
    # from history, a page at a time as the user scrolls up
    fresh = open_browser(browsers, node.url)
    fresh.wait(lambda d: state_of(node, web_id) == "offline", "the first browser gone")
    fresh.sign_in(web_id)
    fresh.open(f"u:{term_id}")
    fresh.wait(lambda d: f"message {count}" in fresh.messages(), "the newest page")
    first_page = len(fresh.messages())
    assert first_page < count
    for _ in range(10):
        if "message 1" in fresh.messages():
            break
        shown = len(fresh.messages())
        fresh.driver.execute_script("document.querySelector('#messages').scrollTop = 0")
        fresh.wait(lambda d, shown=shown: len(fresh.messages()) > shown, "an older page after scrolling up")
    assert fresh.messages() == [f"message {i}" for i in range(1, count + 1)]
    fresh.wait(lambda d: fresh.text("#history-status") == "Start of the conversation", "the start shown")


def test_the_keyboard_alone_befriends_and_chats(node: ServerProcess, browsers: list[Browser]) -> None:
    from selenium.webdriver.common.keys import Keys

    kim = open_browser(browsers, node.url)
    lee = open_browser(browsers, node.url)
    lee_name = person("Lee")
    lee_id = lee.register(lee_name)
    # the page opens on "create an account", its first field focused
    kim.visible("#register-name")
    kim.wait(lambda d: kim.focused().get_attribute("id") == "register-name", "the name field focused")
    kim.keys(person("Kim"), Keys.TAB, "secret", Keys.ENTER)
    kim.wait(lambda d: kim.connection() == "online" and kim.find("#me-id").is_displayed(), "signed in")
    kim_id = int(kim.text("#me-id").rsplit(" ", 1)[1])
    # the menu, then "Add a friend", a name, Tab to the result's button
    kim.tab_to("#menu-button")
    kim.keys(Keys.ENTER)
    kim.wait(lambda d: kim.focused().get_attribute("data-action") == "add-friend", "the menu's first item focused")
    kim.keys(Keys.ENTER)
    kim.wait(lambda d: kim.focused().get_attribute("id") == "finder-query", "the search field focused")
    kim.keys(lee_name)
    kim.visible(f'#finder-results li[data-id="{lee_id}"] button.primary')
    kim.tab_to(f'#finder-results li[data-id="{lee_id}"] button')
    kim.keys(Keys.ENTER)
    lee.visible(f'#requests li[data-id="{kim_id}"]')
    # Escape clears the search field (as in any search field), then closes
    kim.wait(lambda d: kim.focused().get_attribute("id") == "finder-query", "the focus back in the search")
    kim.keys(Keys.ESCAPE)
    kim.wait(lambda d: kim.find("#finder-query").get_attribute("value") == "", "the search cleared")
    kim.keys(Keys.ESCAPE)
    kim.wait(lambda d: not kim.find("#finder").is_displayed(), "the finder closed by Escape")
    lee.accept(kim_id)
    # the new friend in the list: Tab to it, Enter opens it with the focus
    # in the message field, Enter sends
    kim.visible(f'.conv-item[data-key="u:{lee_id}"]')
    kim.tab_to(f'.conv-item[data-key="u:{lee_id}"]')
    kim.keys(Keys.ENTER)
    kim.wait(lambda d: kim.focused().get_attribute("id") == "message-input", "the message field focused")
    kim.keys("typed, never clicked", Keys.ENTER)
    lee.wait_message("typed, never clicked")
    kim.keys(Keys.ESCAPE)  # back out of the conversation
    kim.wait(lambda d: not kim.find("#conv-header").is_displayed(), "the conversation closed by Escape")


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
