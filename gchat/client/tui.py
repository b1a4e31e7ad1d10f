"""gchat-client: the terminal chat client (the original client's whole flow).

    gchat-client HOST PORT [--login ID | --register NAME] [--classic] [--timeout S] [--linger S]

A menu (1 login, 2 register, 3 quit); once logged in, the user's info, friends
with their state, groups with members and roles, and the offline messages;
then the commands of the `COMMANDS` table below (`help` lists them), such as
`chat:friendid:message`.

Interactive (standard input is a terminal): prompt_toolkit with
`patch_stdout`, so a message arriving while a line is half typed is printed
above the prompt and the line is redrawn intact. readline cannot do that: it
has no thread-safe way to print from the reader thread during `input()`.
The connection being lost is announced at once; the next line entered offers
to reconnect and log in again. Ctrl-C drops the line being typed and says so;
a second one in a row logs out and leaves.

The password comes from the GCHAT_PASSWORD environment variable, or is asked
for (a --password flag would be visible to every user in `ps`).

Scripts (standard input not a terminal): the same answers and commands, one
per line, no prompts printed: `1`, the id, the password, then commands; or
`--login ID` and the password (unless GCHAT_PASSWORD is set), then commands.
`--register NAME` creates the account and logs in as it. At the end of input
the client stays
`--linger` seconds to print late messages, then logs out. Exit status: 0, or 1
when the server cannot be reached or the connection is lost.

Acknowledgements: by default the client asks for part-B acks, which a gchat
node grants (the login reply echoes `seq`) and the original server ignores;
then errors and results (group ids, delivery) are shown. `--classic` sends
exactly the original client's frames.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from gchat.client import Client, ConnectionLost, GchatError, error_from_reply
from gchat.client.screen import IO, MENU, LineIO, TerminalIO, describe, format_login, format_message
from gchat.client.tui_social import SOCIAL, Command, Known, user_id
from gchat.client.types import Event

# the password for --login / --register, when the prompt is not wanted
PASSWORD_ENV = "GCHAT_PASSWORD"

# --- the program -----------------------------------------------------------


class Quit(Exception):
    """Leave the program with this status."""

    def __init__(self, status: int = 0) -> None:
        super().__init__(status)
        self.status = status


class TerminalClient:
    """One user at gchat-client: the menu, then the commands, over one
    connection at a time (a lost one is offered again)."""

    def __init__(self, args: argparse.Namespace, io: IO) -> None:
        self.args = args
        self.io = io
        self.client: Client | None = None
        self.credentials: tuple[int, str] | None = None  # to log in again after a reconnect
        self.known = Known()  # friends, groups, requests as of now (docs/protocol.md section F)

    # connection -------------------------------------------------------------

    def connect(self) -> Client:
        self.client = Client.connect(
            self.args.host,
            self.args.port,
            timeout=self.args.timeout,
            tls=self.args.tls or bool(self.args.ca),
            ca=self.args.ca,
            acks=False if self.args.classic else None,
            on_message=lambda m: self.io.show(format_message(m)),
            on_reply=self._unrequested,
            on_close=self._lost,
            on_event=self._event,
        )
        return self.client

    def _event(self, event: Event) -> None:
        self.io.show(self.known.learn(event))

    def _unrequested(self, reply: dict[str, Any]) -> None:
        # Without acks, an error to a silent request is all the server says.
        if reply.get("errno"):
            self.io.show(describe(error_from_reply(reply)))

    def _lost(self, error: GchatError | None) -> None:
        if error is not None:
            hint = " - press Enter to reconnect" if self.io.interactive else ""
            self.io.show(f"*** {describe(error)}{hint}")

    def reconnect(self) -> bool:
        """After a lost connection: offer to reconnect and log in again.
        Returns True when logged in again."""
        if not self.io.interactive:
            raise Quit(1)
        answer = self.io.ask("reconnect? [Y/n] ")
        if answer is None or answer.strip().lower() not in ("", "y", "yes"):
            raise Quit(1)
        try:
            self.connect()
            if self.credentials is None:
                return False
            self.login(*self.credentials)
            return True
        except GchatError as e:
            self.io.show(describe(e, "login"))
            return False

    def call(self, what: Callable[[], Any], during: str = "") -> Any:
        """Run one request; errors are shown and give None."""
        try:
            return what()
        except ConnectionLost:
            raise
        except GchatError as e:
            self.io.show(describe(e, during))
            return None

    def done(self, what: Callable[[], object]) -> bool:
        """Run a request that answers nothing but success; False when it
        failed (the error is shown)."""
        def run() -> bool:
            what()
            return True

        return bool(self.call(run))

    # the menu ---------------------------------------------------------------

    def run(self) -> int:
        try:
            self.connect()
        except ConnectionLost as e:
            self.io.show(f"cannot reach the server: {e.errmsg}")
            return 1
        except KeyboardInterrupt:
            return 130
        try:
            if self.args.register is not None:
                self.register(self.args.register, self.password(), then_login=True)
            elif self.args.login is not None:
                self.login(self.args.login, self.password())
            flags = self.args.register is not None or self.args.login is not None
            if flags and not self.logged_in and not self.io.interactive:
                raise Quit(1)  # a script must not go on as nobody
            while True:
                if self.logged_in:
                    self.session()
                else:
                    self.menu()
        except Quit as q:
            return q.status
        except KeyboardInterrupt:
            # a second Ctrl-C at the prompt (TerminalIO), or any in a script
            self.leave()
            self.io.show("bye")
            return 0 if self.io.interactive else 130
        finally:
            if self.client is not None:
                self.client.close()

    @property
    def logged_in(self) -> bool:
        return self.client is not None and self.client.user is not None

    def password(self) -> str:
        if self.args.password is not None:
            return str(self.args.password)
        answer = self.io.ask("password: ", password=True)
        if answer is None:
            raise Quit(0)
        return answer

    def menu(self) -> None:
        if self.io.interactive:
            self.io.show(MENU)
        choice = self.io.ask("choice: ")
        if choice is None:
            raise Quit(0)
        choice = choice.strip()
        try:
            if choice == "1":
                user = self.io.ask("user id: ")
                if user is None:
                    raise Quit(0)
                if not user.strip().isdigit():
                    self.io.show("a user id is a number")
                    return
                self.login(int(user), self.password())
            elif choice == "2":
                name = self.io.ask("user name: ")
                if name is None:
                    raise Quit(0)
                password = self.password()
                new_id = self.register(name.strip(), password)
                if new_id is not None and self.io.interactive:
                    answer = self.io.ask(f"log in as {name.strip()} (id {new_id}) now? [Y/n] ")
                    if answer is not None and answer.strip().lower() in ("", "y", "yes"):
                        self.login(new_id, password)
            elif choice == "3":
                raise Quit(0)
            elif choice:
                self.io.show("choose 1, 2 or 3")
        except ConnectionLost as e:
            self.io.show(describe(e))
            self.reconnect()

    def login(self, user_id: int, password: str) -> None:
        assert self.client is not None
        client = self.client
        # section D: unread counts, at-least-once with de-duplication; notices
        # (friend requests, presence, group changes) from a gchat node
        modern = not self.args.classic
        me = self.call(lambda: client.login(user_id, password, sync=modern, notices=modern), "login")
        if me is not None:
            self.credentials = (user_id, password)
            self.known = Known.from_login(me)
            self.io.show(format_login(me))

    def register(self, name: str, password: str, then_login: bool = False) -> int | None:
        """The new account's id (None: refused, and said why)."""
        assert self.client is not None
        client = self.client
        new_id: int | None = self.call(lambda: client.register(name, password), "register")
        if new_id is None:
            if then_login:
                raise Quit(1)
            return None
        self.io.show(f"registered {name}: your id is {new_id}")
        if then_login:
            self.login(new_id, password)
        return new_id

    # logged in --------------------------------------------------------------

    def session(self) -> None:
        assert self.client is not None
        line = self.io.ask("> ")
        if line is None:  # end of input
            if self.args.linger > 0 and not self.client.closed:
                time.sleep(self.args.linger)
            self.leave()
            raise Quit(1 if self.client.closed else 0)
        if self.client.closed:
            self.reconnect()
            return
        try:
            self.command(line.strip())
        except ConnectionLost as e:
            if not self.client.closed:  # already announced by on_close otherwise
                self.io.show(describe(e))
            self.reconnect()

    def leave(self) -> None:
        assert self.client is not None
        if self.client.user is not None and not self.client.closed:
            try:
                self.client.logout()
            except GchatError:
                pass  # leaving anyway; the server logs us out on disconnect

    def command(self, line: str) -> None:
        assert self.client is not None
        name, _, rest = line.partition(":")
        name = name.strip().lower()
        if not name:
            return
        command = COMMANDS.get(name)
        if command is None:
            self.io.show(f"unknown command {name!r}; type help for the list")
            return
        command.run(self, self.client, rest)

    def number(self, text: str, usage: str) -> int | None:
        if text.strip().isdigit():
            return int(text.strip())
        self.io.show(f"usage: {usage} (the id is a number)")
        return None

    def number_and_text(self, rest: str, usage: str) -> tuple[int | None, str]:
        head, sep, msg = rest.partition(":")
        if not sep or not msg:
            self.io.show(f"usage: {usage}")
            return None, ""
        return self.number(head, usage), msg


# --- the commands, once logged in ------------------------------------------
# Each gets the terminal client, its connection and the text after "name:".


def _help(t: TerminalClient, c: Client, rest: str) -> None:
    t.io.show(HELP)


def _quit(t: TerminalClient, c: Client, rest: str) -> None:
    t.leave()
    raise Quit(0)


def _loginout(t: TerminalClient, c: Client, rest: str) -> None:
    t.leave()
    t.credentials = None
    t.io.show("logged out")


def _chat(t: TerminalClient, c: Client, rest: str) -> None:
    to, msg = t.number_and_text(rest, COMMANDS["chat"].usage)
    if to is not None:
        # a 1-tuple: None is a refusal (shown by call), while the answer itself
        # may be None (no acknowledgement)
        got = t.call(lambda: (c.chat(to, msg),))
        if got is None:
            return
        (state,) = got
        if state == "offline":
            t.io.show(f"user {to} is offline; the message waits for their next login")
        else:  # None: the server does not acknowledge (--classic, or the original server)
            t.io.show(f"delivered to user {to}" if state == "online" else f"sent to user {to}")


def _addfriend(t: TerminalClient, c: Client, rest: str) -> None:
    fid = user_id(t, c, rest, COMMANDS["addfriend"].usage) if not t.args.classic else \
        t.number(rest, COMMANDS["addfriend"].usage)
    if fid is not None:
        friend = t.call(lambda: c.add_friend(fid))
        if friend is not None:
            t.known.befriend(friend)
            t.io.show(f"friend added: {friend.name} ({friend.id}), {friend.state}")


def _creategroup(t: TerminalClient, c: Client, rest: str) -> None:
    gname, _, desc = rest.partition(":")
    if not gname.strip():
        t.io.show(f"usage: {COMMANDS['creategroup'].usage}")
        return
    gid = t.call(lambda: c.create_group(gname.strip(), desc.strip()))
    if gid is not None:
        t.known.groups[gid] = gname.strip()
        t.io.show(f"group created: {gname.strip()} (id {gid})")


def _addgroup(t: TerminalClient, c: Client, rest: str) -> None:
    gid = t.number(rest, COMMANDS["addgroup"].usage)
    if gid is not None:
        if not t.done(lambda: c.join_group(gid)):
            return
        # without acks a refusal may still come, shown when it does
        t.io.show(f"joined group {gid}" if c.acks else f"asked to join group {gid}")


def _groupchat(t: TerminalClient, c: Client, rest: str) -> None:
    gid, msg = t.number_and_text(rest, COMMANDS["groupchat"].usage)
    if gid is not None:
        got = t.call(lambda: (c.group_chat(gid, msg),))
        if got is None:
            return
        (members,) = got
        t.io.show(f"sent to group {gid}" + (f" ({members} other member(s))" if members is not None else ""))


def _history(t: TerminalClient, c: Client, rest: str, key: str, usage: str) -> None:
    ident = t.number(rest, usage)
    if ident is not None:
        page = t.call(lambda: c.history(**{key: ident}))
        if page is not None:
            t.io.show("\n".join(format_message(m) for m in page) if page else "no messages")


COMMANDS: dict[str, Command] = {
    "help": Command("help", "show this list", _help),
    "chat": Command("chat:friendid:message", "send a message to a user", _chat),
    "addfriend": Command("addfriend:id-or-name", "add a friend", _addfriend),
    "creategroup": Command("creategroup:name:desc", "create a group", _creategroup),
    "addgroup": Command("addgroup:groupid", "join a group", _addgroup),
    "groupchat": Command("groupchat:groupid:message", "send a message to a group", _groupchat),
    "history": Command("history:userid", "the last messages with a user",
                       lambda t, c, rest: _history(t, c, rest, "to", "history:userid")),
    "grouphistory": Command("grouphistory:groupid", "the last messages of a group",
                            lambda t, c, rest: _history(t, c, rest, "groupid", "grouphistory:groupid")),
    **SOCIAL,
    "loginout": Command("loginout", "log out (back to the menu)", _loginout),
    "quit": Command("quit", "log out and leave", _quit),
}

HELP = "commands:\n" + "\n".join(f"  {c.usage:<27} {c.help}" for c in COMMANDS.values())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gchat-client",
        description="Terminal client of the gchat cluster chat server (and of the original C++ server).",
        epilog=HELP + "\n\nWithout a terminal on standard input, menu answers and commands "
        "are read one per line (e.g. 1, id, password, chat:2:hi).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("host")
    p.add_argument("port", type=int)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--login", type=int, metavar="ID", help="log in as this user id at once")
    who.add_argument("--register", metavar="NAME", help="create this account, then log in as it")
    # refused with the way to do it instead: a password in argv shows in `ps`
    p.add_argument("--password", help=argparse.SUPPRESS)
    p.add_argument("--classic", action="store_true", help="send only the original client's frames (no acks)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="connect and reply timeout (10)")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS (nginx's TLS port); the server's certificate is verified")
    p.add_argument("--ca", metavar="PEM", help="with --tls: trust this CA certificate (a private CA) "
                   "instead of the system's")
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="S",
        help="at end of input, keep printing incoming messages this long before logging out (0)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.password is not None:
        print("gchat-client: --password is visible to every user in `ps`: set GCHAT_PASSWORD, or type it "
              "when asked", file=sys.stderr)
        return 2
    args.password = os.environ.get(PASSWORD_ENV)
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit.patch_stdout import patch_stdout

        with patch_stdout():
            return TerminalClient(args, TerminalIO()).run()
    return TerminalClient(args, LineIO()).run()


if __name__ == "__main__":
    sys.exit(main())
