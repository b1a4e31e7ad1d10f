"""The schema is Alembic's: find the migrations, bring SQLite to head, and
refuse to run on a MySQL schema that is behind."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from gchat.store import Database

log = logging.getLogger(__name__)


class SchemaBehind(Exception):
    pass


def script_location() -> str:
    """Installed, the migrations ship as gchat/migrations; in a source tree
    (editable install, tests) they are the top-level alembic/ folder."""
    here = Path(__file__).resolve().parent
    installed = here / "migrations"
    if (installed / "env.py").is_file():
        return str(installed)
    return str(here.parent / "alembic")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    if url:
        cfg.attributes["url"] = url
    return cfg


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database) -> None:
    before = current(db)
    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    after = current(db)
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "nothing", after)


def prepare(db: Database) -> None:
    """SQLite is the node's own file: migrate it. A shared MySQL is migrated
    by its operator (`gchat-admin migrate`), never behind the other nodes'
    backs by whichever node starts first."""
    if db.is_sqlite:
        upgrade(db)
        return
    have, want = current(db), head()
    if have != want:
        raise SchemaBehind(
            f"database schema is at {have or 'nothing'}, gchat needs {want}: "
            "run `gchat-admin migrate` with the same --database-url (or GCHAT_DATABASE_URL) first"
        )
