"""The schema, without the source tree: the migrations shipped in the
package (gchat/schema.py finds them) brought to head, or checked."""

from __future__ import annotations

import argparse

from gchat import schema
from gchat.config import Settings
from gchat.tools.admin.stores import Refused, open_db, safe_url, sqlite_path


def migrate(settings: Settings, args: argparse.Namespace) -> None:
    path = sqlite_path(settings)
    where = str(path) if path is not None else safe_url(settings.database_url)
    # migrate makes a SQLite file that is not there yet; the check does not
    db = open_db(settings, must_exist=args.check, at_head=False)
    try:
        have, want = schema.current(db), schema.head()
        if args.check:
            if have != want:
                raise Refused(f"the database at {where} has schema {have or 'none'}, gchat needs {want}: "
                              "run `gchat-admin migrate`")
            print(f"the database at {where} is at {want}, the newest schema")
            return
        schema.upgrade(db)
    finally:
        db.dispose()
    print(f"the database at {where} is at {want}" + (f" (was {have or 'empty'})" if have != want else
                                                      ", already the newest schema"))
