"""Retention (docs/architecture.md, "The conversation log"): delete the
messages past the configured age or count, in small transactions, so it is
safe while nodes serve. Sequence numbers and cursors stay: numbers are never
reused, and what was pruned is simply absent from history."""

from __future__ import annotations

import argparse
import time

from gchat import convlog
from gchat.config import Settings
from gchat.tools.admin.stores import Refused, open_db

# messages deleted per transaction: a node writing to the same conversations
# waits at most for one such batch
PRUNE_BATCH = 2000


def prune(settings: Settings, args: argparse.Namespace) -> None:
    if settings.retention_days <= 0 and settings.retention_keep <= 0:
        raise Refused("nothing to prune by: set --retention-days and/or --retention-keep "
                      "(GCHAT_RETENTION_DAYS, GCHAT_RETENTION_KEEP)")
    older = int((time.time() - settings.retention_days * 86400) * 1000) if settings.retention_days > 0 else None
    keep = settings.retention_keep if settings.retention_keep > 0 else None
    db = open_db(settings)
    total = 0
    try:
        while True:
            with db.transaction() as s:
                n = convlog.prune(s, older_than_ms=older, keep_last=keep, limit=PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH:
                break
    finally:
        db.dispose()
    print(f"pruned {total} message(s)")
