"""One query, sent and answered on the socket PyMySQL opened and
authenticated: the log's writer's batches (gchat/writer.py).

Why not PyMySQL's `Cursor.execute`: a batch's one query went through the
cursor, `Connection.query`, a `MySQLResult`, `_read_packet` twice per
packet (its header, then its payload) through a BufferedReader over a
SocketIO, each read a `recv_into` that first failed with EAGAIN and then
waited under a gevent Timeout, and an `OKPacketWrapper` around a
`MysqlPacket`: ~400 µs of Python a batch on the bench machine, a seventh of
a busy node's CPU (docs/benchmarks.md, "The writer's query on the wire").
Here the query is one `send`, its answer one wait and (almost always)
one `recv`, parsed in place (the MySQL client/server protocol: a COM_QUERY
packet; OK or ERR packets back, and, where the caller asks for them, the
rows of a result set of ints: the fast path's compound statement answers
one when a conversation moved, the rows it then locked).

What stays PyMySQL's: the handshake, TLS, every other query that returns
rows, ROLLBACK. Its connection's state is kept as its own reads would leave
it:
`server_status` from each OK packet (the writer reads NO_BACKSLASH_ESCAPES
there), a lost connection closed (`_force_close`) and raised as PyMySQL
raises it (OperationalError 2013 or 2006, which SQLAlchemy's dialect calls a
disconnect), an ERR packet raised as PyMySQL's own exception for its errno
(a deadlock, a duplicate key).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pymysql import err  # type: ignore[import-untyped]  # PyMySQL ships no types

from gchat.reads import Reads

COM_QUERY = 3
# a packet's longest payload: a longer one is split, and a query that long
# (never a batch of chat messages) goes through PyMySQL
MAX_PACKET = 0xFFFFFF
MORE_RESULTS = 8  # SERVER_MORE_RESULTS_EXISTS: another result of a multi-statement query follows
CHUNK = 65536  # what one recv asks the kernel for
CR_SERVER_GONE_ERROR, CR_SERVER_LOST = 2006, 2013  # PyMySQL's constants.CR
Rows = list[tuple[int | None, ...]]  # a result set of ints, as read here


class Wire:
    """A PyMySQL connection's socket, for `query`; made once per connection
    (`for_`): looking at the socket (is it TLS's? gevent's watcher) is an
    attribute miss through gevent's socket each time."""

    __slots__ = ("raw", "sock", "reads", "usable")

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sock = sock = raw._sock
        # a TLS socket's records are PyMySQL's to read (its BufferedReader
        # may hold some, and a decrypted record may wait in the SSL object
        # while the descriptor shows nothing readable): PyMySQL's path
        self.usable = sock is not None and not getattr(raw, "_secure", False) and not hasattr(sock, "pending")
        # every read of an answer waits for readability first: the query
        # has just been sent, the server has not answered yet
        self.reads = Reads(sock, drained=True, wait=_deadline(sock) if self.usable else None)

    @staticmethod
    def for_(raw: Any, last: Wire | None) -> Wire:
        """raw's Wire: last, if it is raw's and raw still has that socket."""
        if last is not None and last.raw is raw and last.sock is raw._sock:
            return last
        return Wire(raw)

    def query(self, sql: str, sets: list[Rows] | None = None) -> int:
        """Send sql (one or several statements) as one COM_QUERY and read its
        answer: the first result's affected (found) rows. A statement may
        return rows only when `sets` is given: each result set is appended
        to it, its fields as ints (NULL: None). An ERR packet is raised as
        PyMySQL raises it (the statements after the failed one were not
        run); a lost connection is closed and raised as PyMySQL's
        OperationalError."""
        raw, sock = self.raw, self.sock
        if raw._sock is not sock or sock is None:  # closed (PyMySQL's _force_close)
            raise err.InterfaceError(0, "")
        data = sql.encode(raw.encoding)
        if len(data) + 1 >= MAX_PACKET:
            return through_cursor(raw, sql, sets)
        raw._result = None  # PyMySQL's last result, read whole: none of its own now
        # the header: a 3-byte length and sequence id 0 (the high byte of
        # the 4-byte int), then the command
        data = struct.pack("<IB", len(data) + 1, COM_QUERY) + data
        try:
            # send, not sendall: gevent's sendall asks the kernel for the
            # send buffer's size and starts a deadline each time; a batch's
            # query fits the buffer (send waits under the socket's timeout
            # when it does not)
            sent = sock.send(data)
            while sent < len(data):
                sent += sock.send(memoryview(data)[sent:])
        except OSError as e:
            raw._force_close()
            raise err.OperationalError(CR_SERVER_GONE_ERROR, f"MySQL server has gone away ({e!r})") from None
        except BaseException:
            raw._force_close()
            raise
        raw._next_seq_id = 1
        self.reads.expect()
        return _Answer(raw, self.reads).read(sets)


def through_cursor(raw: Any, sql: str, sets: list[Rows] | None = None) -> int:
    """query's answer through PyMySQL's cursor, every result read (a TLS
    connection, a query longer than one packet): the first result's
    affected (found) rows; each result set appended to `sets`."""
    cur = raw.cursor()
    try:
        cur.execute(sql)
        matched = int(cur.rowcount)
        while True:
            if cur.description is not None:
                if sets is None:
                    raise err.InternalError("unexpected rows in the answer to a query without rows")
                sets.append([tuple(None if f is None else int(f) for f in r) for r in cur.fetchall()])
            if not cur.nextset():
                break
    finally:
        cur.close()
    return matched


class _Answer:
    """A query's answer, packet by packet (the MySQL protocol's packets:
    a 3-byte length, a sequence id, the payload)."""

    __slots__ = ("raw", "reads", "buf", "seq")

    def __init__(self, raw: Any, reads: Reads) -> None:
        self.raw = raw
        self.reads = reads
        self.buf = b""
        self.seq = 1

    def packet(self) -> bytes:
        raw = self.raw
        buf = _fill(raw, self.reads, self.buf, 4)
        length = buf[0] | buf[1] << 8 | buf[2] << 16
        if buf[3] != self.seq:
            raw._force_close()
            if buf[3] == 0:  # MariaDB's ERR packet when it shuts down (as PyMySQL reads it)
                raise err.OperationalError(CR_SERVER_LOST, "Lost connection to MySQL server during query")
            raise err.InternalError(f"Packet sequence number wrong - got {buf[3]} expected {self.seq}")
        if length >= MAX_PACKET:  # never for an OK or ERR packet, nor a row of ints
            raw._force_close()
            raise err.InternalError(f"unexpected packet of {length} bytes")
        buf = _fill(raw, self.reads, buf, 4 + length)
        payload, self.buf = buf[4:4 + length], buf[4 + length:]
        self.seq = (self.seq + 1) % 256
        raw._next_seq_id = self.seq
        return payload

    def read(self, sets: list[Rows] | None) -> int:
        """The query's OK packets (several: a multi-statement query's, each
        but the last with MORE_RESULTS set), result sets where `sets` takes
        them, or its ERR packet."""
        raw = self.raw
        first: int | None = None
        while True:
            payload = self.packet()
            if payload[0] == 0xFF:  # ERR: the query ends here
                if self.buf:  # bytes after the end: the connection is out of step
                    raw._force_close()
                err.raise_mysql_exception(payload)
            if payload[0] == 0x00 and len(payload) >= 7:  # OK
                affected, at = _lenenc(payload, 1)
                _, at = _lenenc(payload, at)  # the last insert id
                status = payload[at] | payload[at + 1] << 8
                if first is None:
                    first = affected
            elif sets is not None and payload[0] not in (0xFB, 0xFE):  # a result set's column count
                rows: Rows = []
                status = self._result_set(payload, rows)
                sets.append(rows)
                if first is None:
                    first = len(rows)
            else:  # a result set nobody asked for, or no OK packet
                raw._force_close()
                raise err.InternalError(f"unexpected answer to a query without rows: {payload[:16]!r}")
            raw.server_status = status
            if not status & MORE_RESULTS:
                if self.buf:  # bytes nobody asked for: the connection is out of step
                    raw._force_close()
                    raise err.InternalError(f"unexpected bytes after a query's answer: {self.buf[:16]!r}")
                return first

    def _result_set(self, head: bytes, rows: Rows) -> int:
        """A text result set after its column count (`head`): the column
        definitions and their EOF packet skipped (PyMySQL's connection does
        not ask for CLIENT_DEPRECATE_EOF), each row's fields read as ints,
        up to the closing EOF packet; its status flags."""
        columns, _ = _lenenc(head, 0)
        for _ in range(columns):
            self.packet()
        if not _eof(self.packet()):
            self.raw._force_close()
            raise err.InternalError("no EOF packet after a result set's columns")
        while True:
            payload = self.packet()
            if _eof(payload):
                return payload[3] | payload[4] << 8
            if payload[0] == 0xFF:  # an error in the middle of the rows
                err.raise_mysql_exception(payload)
            row: list[int | None] = []
            at = 0
            for _ in range(columns):
                if payload[at] == 0xFB:  # NULL
                    row.append(None)
                    at += 1
                    continue
                size, at = _lenenc(payload, at)
                row.append(int(payload[at:at + size]))
                at += size
            rows.append(tuple(row))


def _eof(payload: bytes) -> bool:
    """An EOF packet (0xFE, warnings, status flags; shorter than 9 bytes:
    a row's first field is never a 0xFE length that short)."""
    return payload[0] == 0xFE and len(payload) < 9


def _deadline(sock: Any) -> Callable[[Any], None] | None:
    """The wait for an answer, under the socket's timeout (PyMySQL's
    read_timeout) as gevent's own wait is, on one timer of the connection's
    own, started and stopped per wait: gevent's wait makes a Timeout (a
    Python object, its timer, its context) each time, a few per cent of a
    small batch's CPU (docs/benchmarks.md, "The writer's batch, per batch").
    None for a socket that is not gevent's, or has no timeout: gevent's
    wait then makes no Timeout either."""
    hub, timeout = getattr(sock, "hub", None), sock.gettimeout()
    if hub is None or timeout is None:
        return None
    # a repeating timer, (re)armed by `again`: libev's stop keeps what is
    # left of a started timer and start resumes it (a pause, not a reset),
    # so a one-shot timer started and stopped per wait fired once the waits
    # had added up to the timeout, however quick each was: a lost
    # connection every db_timeout of a busy writer's waits, the answer
    # already there (docs/robustness.md, case 16). `again` sets it to the
    # repeat interval each time
    timer = hub.loop.timer(timeout, timeout)

    def cancel(watcher: Any) -> None:  # in the hub, once the deadline passed
        hub.cancel_wait(watcher, TimeoutError("timed out"), False)  # socket.timeout, what gevent's wait raises

    def wait(watcher: Any) -> None:
        # from now, not from the loop's time of its last turn (update, as
        # gevent's Timeout does): a greenlet that held the loop longer than
        # the timeout (a long batch, a stalled VM) made it fire at once
        timer.again(cancel, watcher, update=True)
        try:
            hub.wait(watcher)
        finally:
            timer.stop()

    return wait


def _fill(raw: Any, reads: Reads, buf: bytes, need: int) -> bytes:
    """buf with at least `need` bytes, read from the socket as they come."""
    while len(buf) < need:
        try:
            data = reads.recv(CHUNK)
        except OSError as e:  # a timeout too, as PyMySQL's reads
            raw._force_close()
            raise err.OperationalError(CR_SERVER_LOST, f"Lost connection to MySQL server during query ({e})") from None
        except BaseException:
            raw._force_close()
            raise
        if not data:
            raw._force_close()
            raise err.OperationalError(CR_SERVER_LOST, "Lost connection to MySQL server during query")
        buf = buf + data if buf else data
    return buf


def _lenenc(b: bytes, at: int) -> tuple[int, int]:
    """A length-encoded integer at b[at] and where the next field starts."""
    first = b[at]
    if first < 0xFB:
        return first, at + 1
    if first == 0xFC:
        return b[at + 1] | b[at + 2] << 8, at + 3
    if first == 0xFD:
        return b[at + 1] | b[at + 2] << 8 | b[at + 3] << 16, at + 4
    return int.from_bytes(b[at + 1:at + 9], "little"), at + 9
