"""Render the repository's nginx.conf for a given set of nodes: used by
scripts/cluster, the cluster tests and the cluster benchmark."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def render(template: str, upstreams: Sequence[tuple[str, int]], listen: str, workdir: Path,
           web_upstreams: Sequence[tuple[str, int]] = (), web_listen: str = "") -> str:
    """nginx.conf with these nodes, this listen address, and the pid and
    error log under workdir; with the nodes' web listeners and the browsers'
    address (web_listen), or without the http block when there are none."""
    servers = "".join(f"        server {h}:{p} weight=1 max_fails=3 fail_timeout=30s;\n" for h, p in upstreams)
    conf = re.sub(
        r"(upstream gchat \{\n)(.*?)(\n\s*\})",
        lambda m: m.group(1) + _comments(m.group(2)) + servers + m.group(3).lstrip("\n"),
        template,
        flags=re.S,
    )
    conf = re.sub(r"(stream \{.*?)listen \S+;", lambda m: m.group(1) + f"listen {listen};", conf, count=1, flags=re.S)
    if web_upstreams and web_listen:
        web = "".join(f"        server {h}:{p} max_fails=3 fail_timeout=30s;\n" for h, p in web_upstreams)
        conf = re.sub(
            r"(upstream gchat_web \{\n)(.*?)(\n\s*#)",
            lambda m: m.group(1) + _comments(m.group(2)) + web + m.group(3).lstrip("\n"),
            conf,
            count=1,
            flags=re.S,
        )
        conf = re.sub(r"(http \{.*?)listen \S+;", lambda m: m.group(1) + f"listen {web_listen};", conf, count=1,
                      flags=re.S)
    else:
        conf = re.sub(r"\nhttp \{.*\n\}\n", "\n", conf, flags=re.S)
    conf = re.sub(r"^pid .*;", f"pid {workdir / 'nginx.pid'};", conf, flags=re.M)
    conf = re.sub(r"^error_log .*;", f"error_log {workdir / 'error.log'} notice;", conf, flags=re.M)
    # one worker: connections are dealt round-robin, one node after the other
    conf = re.sub(r"^worker_processes .*;", "worker_processes 1;", conf, flags=re.M)
    if not STREAM_MODULE.exists():  # built into nginx where the module is not packaged apart
        conf = re.sub(r"^load_module .*;\n", "", conf, flags=re.M)
    return conf


def _comments(block: str) -> str:
    return "".join(line + "\n" for line in block.splitlines() if line.strip().startswith("#"))


def main(argv: Sequence[str] | None = None) -> None:
    """python -m gchat.tools.nginxconf TEMPLATE WORKDIR LISTEN HOST:PORT... [--web LISTEN HOST:PORT...] > nginx.conf"""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    web: list[str] = []
    if "--web" in args:
        at = args.index("--web")
        args, web = args[:at], args[at + 1:]
    template, workdir, listen, nodes = Path(args[0]), Path(args[1]), args[2], args[3:]
    ups = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in nodes)]
    web_ups = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in web[1:])]
    sys.stdout.write(render(template.read_text(), ups, listen, workdir, web_ups, web[0] if web else ""))


if __name__ == "__main__":
    main()
