"""gchat-client end to end: driven through standard input (the script mode)
and through a pseudo-terminal (the prompt_toolkit mode), against a real server."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pexpect

from gchat.client import ChatMessage, Client, Friend, Group, GroupMember, LoginResult
from gchat.client.screen import format_login, format_message
from tests.support import unique

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONUNBUFFERED": "1"}
# a client process starts in a second or two; a loaded 2-core CI machine may take
# several times that, so every wait for what it shows has 30 s
TUI = [sys.executable, "-m", "gchat.client.tui"]


def spawn_tui(*args: str, password: str | None = None) -> pexpect.spawn:
    """gchat-client on a pseudo-terminal, as a person runs it."""
    env = ENV if password is None else {**ENV, "GCHAT_PASSWORD": password}
    return pexpect.spawn(TUI[0], [*TUI[1:], *args], env=env, encoding="utf-8", timeout=30, dimensions=(40, 160))


def run_tui(*args: str, stdin: str = "", password: str | None = None) -> subprocess.CompletedProcess[str]:
    """gchat-client in script mode, its input from stdin; the password (for
    --login / --register) from GCHAT_PASSWORD."""
    env = ENV if password is None else {**ENV, "GCHAT_PASSWORD": password}
    return subprocess.run([*TUI, *args], input=stdin, capture_output=True, text=True, env=env, timeout=30,
                          check=False)


def test_format_message_and_login():
    one = ChatMessage(5, 15, "li si", "hi", "2024-01-02 03:04:05", to=13)
    group = ChatMessage(9, 15, "li si", "all", "2024-01-02 03:04:06", groupid=2)
    assert format_message(one) == "[2024-01-02 03:04:05] li si (15): hi"
    assert format_message(group) == "[2024-01-02 03:04:06] group 2 | li si (15): all"
    system = ChatMessage(5, 0, "system", "maintenance at 10", "2024-01-02 03:04:07", to=13)
    assert format_message(system) == "[2024-01-02 03:04:07] *** system: maintenance at 10"
    me = LoginResult(
        13,
        "zhang san",
        (Friend(15, "li si", "online"),),
        (Group(2, "devs", "the team", (GroupMember(13, "zhang san", "online", "creator"),)),),
        (one,),
    )
    text = format_login(me)
    for part in (
        "zhang san (id 13)",
        "li si",
        "online",
        "[2] devs - the team",
        "creator",
        "offline messages (1)",
        "[2024-01-02 03:04:05] li si (15): hi",
    ):
        assert part in text


class Lines:
    """The output of a process, line by line, with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{text!r} not seen; output so far: {self.seen}") from None
            if line is None:
                raise AssertionError(f"{text!r} not seen before the end; output: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line


def users(server: Any) -> tuple[int, int, str]:
    bob = unique("bob")
    with Client.connect(server.host, server.port) as c:
        return c.register(unique("alice"), "pa"), c.register(bob, "pb"), bob


def spawn(server: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TUI, server.host, str(server.port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


def test_script_mode_login_chat_receive_logout(server):
    ida, idb, bob_name = users(server)
    with Client.connect(server.host, server.port) as bob:
        bob.login(idb, "pb")
        p = spawn(server)
        assert p.stdin is not None and p.stdout is not None
        out = Lines(p.stdout)
        p.stdin.write(f"1\n{ida}\npa\n")
        p.stdin.flush()
        out.until(f"(id {ida})")
        out.until("type help")
        bob.chat(ida, "hello alice")
        assert out.until("hello alice").endswith(f"{bob_name} ({idb}): hello alice")
        p.stdin.write(f"chat:{idb}:hello: bob\naddfriend:{idb}\nloginout\n3\n")
        p.stdin.flush()
        m = bob.next_message(timeout=30)
        assert m is not None and (m.sender_id, m.text) == (ida, "hello: bob")
        out.until(f"friend added: {bob_name} ({idb}), online")
        out.until("logged out")
        assert p.wait(10) == 0


def test_script_mode_flags_errors_and_groups(server):
    ida, idb, bob_name = users(server)
    # wrong password: a clear message and status 1
    p = run_tui(server.host, str(server.port), "--login", str(ida), password="nope")
    assert p.returncode == 1 and "wrong id or password" in p.stdout
    with Client.connect(server.host, server.port) as bob:
        bob.login(idb, "pb")
        # already online
        p = run_tui(server.host, str(server.port), "--login", str(idb), password="pb")
        assert p.returncode == 1 and "already logged in" in p.stdout
        gid = bob.create_group("g" + bob_name, "bob's")
        script = (
            f"addgroup:{gid}\ngroupchat:{gid}:hi group\nchat:{2**31 - 2}:x\naddgroup:{2**31 - 2}\n"
            f"chat:notanumber:x\nbogus\ncreategroup:\naddfriend:{idb}\naddfriend:{idb}\nchat:{idb}:hey\nquit\n"
        )
        p = run_tui(server.host, str(server.port), "--login", str(ida), password="pa", stdin=script)
        assert p.returncode == 0, p.stdout
        m = bob.next_message(timeout=30)
        assert m is not None and m.is_group and (m.groupid, m.text) == (gid, "hi group")
        assert p.stdout.count("no such user or group") == 2
        for text in ("usage: chat:friendid:message", "unknown command 'bogus'", "usage: creategroup:name:desc",
                     # each command says what it did, and errors are words, not errnos
                     f"joined group {gid}", f"sent to group {gid} (1 other member(s))", f"delivered to user {idb}",
                     f"already done: user {idb} is already your friend"):
            assert text in p.stdout
        assert "errno" not in p.stdout


def test_register_flag_and_classic_mode(server):
    _, idb, _ = users(server)
    name = unique("carol")
    with Client.connect(server.host, server.port) as bob:
        bob.login(idb, "pb")
        p = run_tui(server.host, str(server.port), "--classic", "--linger", "1", "--register", name,
                    password="pc", stdin=f"chat:{idb}:classic hi\nchat:{2**31 - 2}:x\n")
        assert p.returncode == 0, p.stdout
        assert f"registered {name}: your id is" in p.stdout and f"logged in as {name}" in p.stdout
        m = bob.next_message(timeout=30)
        assert m is not None and m.text == "classic hi"
    # without acks the server still answers errors; the client shows those that
    # come in before it leaves (--linger), in words
    assert f"sent to user {idb}" in p.stdout
    assert "no such user or group" in p.stdout and "errno" not in p.stdout


def test_cannot_connect():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run_tui("127.0.0.1", str(port))
    assert p.returncode == 1 and "cannot reach the server" in p.stdout


def test_connection_lost_is_reported():
    """A server that accepts the login and then goes away."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    shown = threading.Event()  # the client printed the login: now the server goes away

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(json.dumps({"msgid": 2, "errno": 0, "id": 1, "name": "x"}).encode())
            shown.wait(15)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    p = subprocess.Popen(
        [*TUI, "127.0.0.1", str(port), "--login", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**ENV, "GCHAT_PASSWORD": "p"},
    )
    assert p.stdout is not None and p.stdin is not None
    out = Lines(p.stdout)
    out.until("logged in as x")
    shown.set()
    out.until("connection lost")
    p.stdin.write("chat:2:anyone\n")
    p.stdin.close()
    assert p.wait(10) == 1


def test_terminal_mode_through_a_pty(server):
    ida, idb, bob_name = users(server)
    with Client.connect(server.host, server.port) as bob:
        bob.login(idb, "pb")
        bob.chat(ida, "while you were away")
        t = spawn_tui(server.host, str(server.port))
        try:
            t.expect("choice:")
            t.sendline("1")
            t.expect("user id:")
            t.sendline(str(ida))
            t.expect("password:")
            t.sendline("pa")
            t.expect(r"offline messages \(1\)")
            t.expect("while you were away")
            t.expect("type help")
            t.send(f"chat:{idb}:half")  # typing, not yet entered ...
            t.expect("half")  # (echoed: the client has it)
            bob.chat(ida, "arrives mid-line")  # ... when a message comes in
            t.expect(f"{bob_name} \\({idb}\\): arrives mid-line")
            t.expect("half")  # the line is redrawn below it, intact
            t.send(" typed\r")
            m = bob.next_message(timeout=30)
            assert m is not None and m.text == "half typed"
            t.sendline("help")
            t.expect("groupchat:groupid:message")
            t.sendline("loginout")
            t.expect("logged out")
            t.expect("choice:")
            t.sendline("3")
            t.expect(pexpect.EOF)
        finally:
            t.close()
        assert t.exitstatus == 0


def test_terminal_mode_offers_to_reconnect(make_server):
    node = make_server()
    with Client.connect(node.host, node.port) as c:
        uid = c.register(unique("dora"), "pd")
    t = spawn_tui(node.host, str(node.port), "--login", str(uid), password="pd")
    try:
        t.expect("type help")
        node.stop()
        t.expect("connection lost")  # at once, not at the next command
        node.start()  # same port, same database
        t.sendline("")
        t.expect(r"reconnect\? \[Y/n\]")
        t.sendline("y")
        t.expect(f"logged in as dora.* \\(id {uid}\\)")
        t.sendline("quit")
        t.expect(pexpect.EOF)
    finally:
        t.close()
    assert t.exitstatus == 0


def test_unread_counts_at_login_and_history_on_request(server):
    ida, idb, bob_name = users(server)
    with Client.connect(server.host, server.port) as bob:
        bob.login(idb, "pb")
        for i in range(3):
            bob.chat(ida, f"waiting {i}")
        gid = bob.create_group(unique("g"), "")
        assert gid is not None
    # the password is the script's first line (never on the command line)
    done = run_tui(server.host, str(server.port), "--login", str(ida),
                   stdin=f"pa\nhistory:{idb}\naddgroup:{gid}\ngrouphistory:{gid}\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"user {idb}: 3" in out  # the unread count at login
    # the login shows the three, history shows them again, in order
    assert out.count("waiting 0") == 2 and out.index("waiting 0") < out.index("waiting 2")
    assert "no messages" in out  # a group's history before anything was said


def test_password_never_on_the_command_line(server):
    ida, _, _ = users(server)
    p = run_tui(server.host, str(server.port), "--login", str(ida), "--password", "pa")
    assert p.returncode == 2 and "GCHAT_PASSWORD" in p.stderr and "ps" in p.stderr
    # without GCHAT_PASSWORD, a script gives it as its first line
    p = run_tui(server.host, str(server.port), "--login", str(ida), stdin="pa\nquit\n")
    assert p.returncode == 0 and f"(id {ida})" in p.stdout, p.stdout


def test_terminal_register_offers_to_log_in_and_ctrl_c_says_how_to_leave(server):
    name = unique("erin")
    t = spawn_tui(server.host, str(server.port))
    try:
        t.expect("choice:")
        t.sendline("2")
        t.expect("user name:")
        t.sendline(name)
        t.expect("password:")
        t.sendline("pe")
        t.expect(r"your id is (\d+)")
        uid = int(t.match.group(1))
        t.expect(rf"log in as {name} \(id {uid}\) now\? \[Y/n\]")
        t.sendline("")
        t.expect(f"logged in as {name}")
        t.expect("type help")
        t.send("half a line")
        t.sendintr()
        t.expect("line dropped; Ctrl-C again")
        # as a person does: the second Ctrl-C once the prompt is back (sent
        # before prompt_toolkit has the terminal again, it could be lost)
        t.expect_exact(">")  # drawn in raw mode: the next Ctrl-C is a key it reads
        t.sendintr()
        t.expect("bye")
        t.expect(pexpect.EOF)
    finally:
        t.close()
    assert t.exitstatus == 0
    with Client.connect(server.host, server.port) as c:
        assert c.login(uid, "pe").name == name  # it logged out on the way
