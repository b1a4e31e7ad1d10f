"""What gchat-client shows, and where: a terminal (prompt_toolkit) or the
lines of a script; the sentences for a login, a message and an error."""

from __future__ import annotations

import sys
import threading

from gchat.client import (
    AlreadyOnline,
    AuthError,
    ChatMessage,
    ConnectionLost,
    GchatError,
    LoginResult,
    NotFound,
    RequestTimeout,
    Unavailable,
)
from gchat.protocol import SYSTEM_ID, Errno

# errno 2's text in docs/protocol.md part A; a node may add why after it
ONLINE_ERRMSG = "id is online"

MENU = """========================
1. login
2. register
3. quit
========================"""

RULE = "=" * 60


# --- input and output: a terminal, or lines of a script ---------------------


class LineIO:
    """Standard input read line by line; output printed as is, prompts not."""

    interactive = False

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def ask(self, prompt: str, password: bool = False) -> str | None:
        line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\r\n")

    def show(self, text: str) -> None:
        with self._lock:  # the reader thread prints too
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


class TerminalIO:
    """prompt_toolkit; used inside `patch_stdout()` so that show() from the
    reader thread lands above the line being edited."""

    interactive = True

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession

        self._session: PromptSession[str] = PromptSession()
        self._interrupted = False

    def ask(self, prompt: str, password: bool = False) -> str | None:
        """The line typed; None at Ctrl-D. Ctrl-C drops the line, as a shell
        does, and says so; a second one in a row raises KeyboardInterrupt
        (the program leaves)."""
        try:
            line = self._session.prompt(prompt, is_password=password)
        except EOFError:  # Ctrl-D
            return None
        except KeyboardInterrupt:
            if self._interrupted:
                raise
            self._interrupted = True
            self.show("^C - line dropped; Ctrl-C again (or Ctrl-D, or quit) to leave")
            return ""
        self._interrupted = False
        return line

    def show(self, text: str) -> None:
        if threading.current_thread() is threading.main_thread():
            # No prompt is running: write at once. The patch_stdout proxy
            # delays its writes, which would put this after the next prompt.
            sys.__stdout__.write(text + "\n")  # type: ignore[union-attr]
            sys.__stdout__.flush()  # type: ignore[union-attr]
        else:
            print(text, flush=True)  # sys.stdout is the patch_stdout proxy here


IO = LineIO | TerminalIO


# --- how things look -------------------------------------------------------


def format_message(m: ChatMessage) -> str:
    when = f"[{m.time}] " if m.time else ""
    if m.sender_id == SYSTEM_ID and not m.is_group:  # an operator's message (gchat-admin)
        return f"{when}*** {m.sender_name}: {m.text}"
    where = f"group {m.groupid} | " if m.is_group else ""
    return f"{when}{where}{m.sender_name} ({m.sender_id}): {m.text}"


def format_login(me: LoginResult) -> str:
    lines = [RULE, f"logged in as {me.name} (id {me.id})"]
    lines.append("friends:" if me.friends else "friends: none")
    for f in me.friends:
        lines.append(f"  {f.id:>6}  {f.name:<20} {f.state}")
    lines.append("groups:" if me.groups else "groups: none")
    for g in me.groups:
        lines.append(f"  [{g.id}] {g.name}" + (f" - {g.desc}" if g.desc else ""))
        for u in g.members:
            lines.append(f"    {u.id:>6}  {u.name:<20} {u.role:<8} {u.state}")
    # a sync login (docs/protocol.md section D): what waits comes by conversation
    waiting = [*me.offline, *(m for c in me.convs for m in c.messages)]
    if waiting:
        lines.append(f"offline messages ({len(waiting)}):")
        lines.extend("  " + format_message(m) for m in waiting)
    unread = [c for c in me.convs if c.unread]
    if unread:
        lines.append("unread:")
        for c in unread:
            where = f"group {c.groupid}" if c.kind == "group" else f"user {c.with_user}"
            lines.append(f"  {where}: {c.unread}" + (" (more in history)" if c.more else ""))
    lines.append(RULE)
    lines.append("type help for the commands")
    return "\n".join(lines)


# what each errno of docs/protocol.md means to the person at the keyboard
ERRNO_WORDS = {
    Errno.AUTH: "refused",
    Errno.ONLINE: "already logged in",
    Errno.BAD_REQUEST: "the server did not accept the request",
    Errno.UNKNOWN_MSGID: "the server does not know this request",
    Errno.NOT_LOGGED_IN: "log in first",
    Errno.FORBIDDEN: "not allowed",
    Errno.NOT_FOUND: "no such user or group",
    Errno.CONFLICT: "already done",
    Errno.FRAME_TOO_LARGE: "too large for the server",
    Errno.RATE_LIMITED: "too many requests, slow down",
    Errno.UNAVAILABLE: "the server cannot do that right now; nothing was changed, try again later",
}


def describe(e: GchatError, during: str = "") -> str:
    """A sentence for the user about an error: words, never a bare errno."""
    if isinstance(e, ConnectionLost):
        return f"connection lost: {e.errmsg}"
    if isinstance(e, RequestTimeout):
        return "the server did not answer in time"
    if isinstance(e, AuthError):
        if during == "login":
            return "login failed: wrong id or password"
        if during == "register":
            return f"register failed: the name is taken or not allowed ({e.errmsg})"
    if isinstance(e, AlreadyOnline):
        # a node may say more: that the other session's node stopped answering, and when to retry
        more = f" ({e.errmsg.removeprefix(ONLINE_ERRMSG).lstrip(' :;,')})" if e.errmsg != ONLINE_ERRMSG else ""
        return f"login failed: this user is already logged in elsewhere{more}"
    if isinstance(e, NotFound):
        return f"no such user or group ({e.errmsg})"
    if isinstance(e, Unavailable) and e.outcome_unknown:
        return "the server lost its database while saving this: it may have been done; look before trying again"
    words = ERRNO_WORDS.get(e.errno, "error") if e.errno is not None else "error"  # type: ignore[call-overload]
    return f"{words}: {e.errmsg}" if e.errmsg and e.errmsg != words else words
