"""gchat-admin: an operator's tool for a node or a cluster (gchat/tools/admin/cli.py)."""

from gchat.tools.admin.cli import main

__all__ = ["main"]
