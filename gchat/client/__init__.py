"""The gchat client library: one connection to a gchat node (or to nginx in
front of a cluster, or to the original C++ server), with typed calls.

    with Client.connect("127.0.0.1", 6000) as c:
        me = c.login(13, "secret")          # LoginResult: friends, groups, offline
        c.chat(15, "hello")                 # "online" / "offline", or None (classic)
        c.request_friend(15, "hi")          # section F: friends, search, groups
        c.next_event(timeout=5)             # Notice / PresenceChange (login notices=True)
        for m in c.messages(timeout=5):      # ChatMessage pushed by the server
            print(m.sender_name, m.text)

Shape: one background reader (a `threading.Thread`, hence a greenlet when the
process has called `gevent.monkey.patch_all()` before connecting) splits
frames with `framing.ReplySplitter` and routes each one: a reply goes to the
request waiting for it, a delivery (msgid 5 and 9) to the message queue or the
`on_message` callback, anything else (acks of fire-and-forget `send()`s, errors
to silent requests) to `on_reply`. Requests hold a lock from send to reply, so
one reply always matches one request, and deliveries arriving meanwhile are
queued, never lost.

Acknowledgements (docs/protocol.md part B `seq`): requests 5 to 10 are silent in
part A. `acks=None` (the default) decides per connection: login and register
carry a `seq`; a gchat node echoes it in its reply, the original server does
not (it ignores unknown fields), so the reply itself tells whether later
requests can be acknowledged. With acks the calls return their results
(group id, friend, delivery state) and raise on errors; without them they are
fire-and-forget exactly like the original client, and return None.
`acks=False` forces classic frames: part-A fields only, NUL-terminated.

TLS: `Client.connect(host, port, tls=True, ca="ca.pem")` speaks TLS to
nginx's TLS port (docs/operations.md); the certificate is verified (system
CAs, or `ca`) and must name `host`.

Every foreign error (OSError, bad JSON from the peer) is translated here into
`ConnectionLost`; every errno of docs/protocol.md into a `GchatError` subclass.

`RawClient` is the same wire without the reader thread, for code that must
see every frame itself (gchat-bench, the tests of the wire): the caller sends
and reads; `call()` waits for a reply matched as `Client.request` matches it
(both use gchat.client.framing), and tolerates the original server's
unterminated replies the same way.

Depends only on the standard library and `gchat.protocol`. gchat-client, the
terminal program on this library, is `tui.py` (commands) and `screen.py`
(what it shows); nothing here imports them.
"""

from gchat.client.connection import Client, now, tls_context
from gchat.client.errors import (
    AlreadyOnline,
    AuthError,
    BadRequest,
    Conflict,
    ConnectionLost,
    Forbidden,
    GchatError,
    NotFound,
    NotLoggedIn,
    RateLimited,
    RequestTimeout,
    Unavailable,
    error_from_reply,
)
from gchat.client.types import (
    ChatMessage,
    Conversation,
    Event,
    Friend,
    Group,
    GroupInfo,
    GroupMember,
    LoginResult,
    Notice,
    Page,
    Person,
    PresenceChange,
    Requests,
)
from gchat.client.wire import RawClient
from gchat.protocol import TIME_FORMAT

__all__ = [
    "Conversation",
    "TIME_FORMAT",
    "AlreadyOnline",
    "AuthError",
    "BadRequest",
    "ChatMessage",
    "Event",
    "GroupInfo",
    "Notice",
    "Page",
    "Person",
    "PresenceChange",
    "Requests",
    "Client",
    "Conflict",
    "ConnectionLost",
    "Forbidden",
    "Friend",
    "GchatError",
    "Group",
    "GroupMember",
    "LoginResult",
    "NotFound",
    "NotLoggedIn",
    "RawClient",
    "RateLimited",
    "RequestTimeout",
    "Unavailable",
    "error_from_reply",
    "now",
    "tls_context",
]
