"""Users and groups: listings, deleting users (one, a name prefix, or what
gchat-bench left behind), and setting a password."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence

from gchat import convlog, store
from gchat.config import Settings
from gchat.models import User
from gchat.passwords import Passwords
from gchat.store import Database
from gchat.tools.admin.reach import forget_users, kick_user
from gchat.tools.admin.stores import Refused, find_user, open_db, open_redis, show, text

# gchat-bench's accounts: "b" + 8 hex digits of its run, "_", a number
# (gchat/tools/bench/accounts.py register()); its groups say "gchat-bench"
BENCH_NAME = re.compile(r"b[0-9a-f]{8}_[0-9]+")
# the new password for `passwd`, for scripts (a flag would show in ps)
PASSWORD_ENV = "GCHAT_NEW_PASSWORD"


def users(settings: Settings, args: argparse.Namespace) -> None:
    db = open_db(settings)
    try:
        with db.transaction() as s:
            found = [(u.id, u.name, u.state) for u in store.list_users(s, args.limit)]
    finally:
        db.dispose()
    where: dict[int, str] = {}
    if settings.redis_url and found:
        a = open_redis(settings, "users")
        held = a.client.mget([a.keys.online_key(uid) for uid, _, _ in found])
        where = {uid: text(h) for (uid, _, _), h in zip(found, held, strict=True) if h}
    rows = [{"id": uid, "name": name, "state": state, "node": where.get(uid)} for uid, name, state in found]
    show(rows, args.json, [("id", ">8"), ("name", "<32"), ("state", "<8"), ("node", "")],
         f"{len(rows)} user(s)" + (f" (first {args.limit})" if len(rows) == args.limit else ""))


def groups(settings: Settings, args: argparse.Namespace) -> None:
    db = open_db(settings)
    try:
        with db.transaction() as s:
            rows = [{"id": g.id, "name": g.groupname, "members": n, "description": g.groupdesc}
                    for g, n in store.list_groups(s, args.limit)]
    finally:
        db.dispose()
    show(rows, args.json, [("id", ">8"), ("name", "<32"), ("members", ">7"), ("description", "")],
         f"{len(rows)} group(s)" + (f" (first {args.limit})" if len(rows) == args.limit else ""))


def delete_user(settings: Settings, args: argparse.Namespace) -> None:
    if args.prefix == "":
        raise Refused("--prefix must not be empty (that would be every user)")
    db = open_db(settings)
    try:
        doomed: Sequence[User]
        if args.user is not None:
            doomed = [find_user(db, args.user)]
        else:
            with db.transaction() as s:
                if args.prefix is not None:
                    doomed = store.users_named(s, args.prefix)
                else:  # --bench
                    doomed = [u for u in store.users_named(s, "b") if BENCH_NAME.fullmatch(u.name)]
        _delete(settings, db, doomed, args.yes or args.user is not None)
    finally:
        db.dispose()


def _delete(settings: Settings, db: Database, doomed: Sequence[User], confirmed: bool) -> None:
    if not doomed:
        print("no such user: nothing deleted")
        return
    if not confirmed:
        names = ", ".join(u.name for u in doomed[:5]) + (", ..." if len(doomed) > 5 else "")
        raise Refused(f"{len(doomed)} user(s) match ({names}): add --yes to delete them")
    # connected users are kicked first, so that no node keeps a session of
    # someone who no longer exists
    for u in _online(settings, doomed):
        label = f"user {u.id} ({u.name})"
        try:
            kick_user(settings, u.id, label, "account deleted")
        except Refused as e:
            raise Refused(f"{label} is online and could not be kicked, nothing deleted: {e}") from e
    ids = [u.id for u in doomed]
    with db.transaction() as s:
        # the groups' member epochs first (under their conversations' locks,
        # as a leave: a writer holding a member list reloads it), then the
        # friend requests and blocks (section F), then the rest
        convlog.members_left(s, ids)
        social = store.delete_social(s, ids)
        done = store.delete_users(s, ids)
    print(f"deleted {done['users']} user(s), {done['friendships']} friendship(s), "
          f"{done['memberships']} group membership(s), {done['messages']} stored message(s), "
          f"{done['groups']} group(s) left empty, {social['requests']} friend request(s), "
          f"{social['blocks']} block(s)")
    forget_users(settings, [u.id for u in doomed])


def passwd(settings: Settings, args: argparse.Namespace) -> None:
    db = open_db(settings)
    try:
        user = find_user(db, args.user)
        password = _new_password(settings)
        digest = Passwords(settings.hash_time_cost, settings.hash_memory_kib).hash(password)
        with db.transaction() as s:
            store.set_password(s, user.id, digest)
            store.set_token(s, user.id, None, None)  # the resume token went with the old password
    finally:
        db.dispose()
    print(f"password of user {user.id} ({user.name}) changed; its resume token is revoked. "
          "A session open now stays open: `gchat-admin kick` ends it")


def _new_password(settings: Settings) -> str:
    """From GCHAT_NEW_PASSWORD, else asked twice on the terminal, else one
    line of standard input."""
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("new password: ")
            if getpass.getpass("again: ") != password:
                raise Refused("the two passwords differ: nothing changed")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    if not 1 <= len(password) <= settings.password_max:
        raise Refused(f"a password is 1 to {settings.password_max} characters: nothing changed")
    return password


def _online(settings: Settings, candidates: Sequence[User]) -> list[User]:
    """Those online: by the presence store in a cluster, else by their state."""
    if not settings.redis_url:
        return [u for u in candidates if u.state == "online"]
    a = open_redis(settings, "delete-user")
    held = a.client.mget([a.keys.online_key(u.id) for u in candidates])
    return [u for u, h in zip(candidates, held, strict=True) if h]
