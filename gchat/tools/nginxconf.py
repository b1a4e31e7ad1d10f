"""Render the repository's nginx.conf for a given set of nodes: used by
scripts/cluster, the cluster tests and the cluster benchmark."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

# the stream block's TLS server, with the comment lines just above it
TLS_BLOCK = re.compile(r"(?:\n[ \t]*#[^\n]*)*\n[ \t]*server \{\n[ \t]*listen \S+ ssl;.*?\n[ \t]*\}\n", re.S)
# the http server's https lines (its ssl listen and ssl_* settings), with their comments
HTTPS_LINES = re.compile(r"(?:[ \t]*#[^\n]*\n)*[ \t]*listen \S+ ssl;\n(?:[ \t]*ssl_[^\n]*\n)*")


@dataclass(frozen=True)
class Tls:
    """nginx's TLS ports: the chat's (`listen`, in the stream block) and,
    when the web app is rendered too, https (`web_listen`); and the
    certificate (its full chain, PEM) and key both present."""

    listen: str
    certificate: Path
    key: Path
    web_listen: str = ""


def render(template: str, upstreams: Sequence[tuple[str, int]], listen: str, workdir: Path,
           web_upstreams: Sequence[tuple[str, int]] = (), web_listen: str = "", tls: Tls | None = None) -> str:
    """nginx.conf with these nodes, this listen address, and the pid and
    error log under workdir; with the nodes' web listeners and the browsers'
    address (web_listen), or without the http block when there are none;
    with `tls`, its TLS ports and certificate, else no TLS port."""
    servers = "".join(f"        server {h}:{p} weight=1 max_fails=3 fail_timeout=30s;\n" for h, p in upstreams)
    conf = re.sub(
        r"(upstream gchat \{\n)(.*?)(\n\s*\})",
        lambda m: m.group(1) + _comments(m.group(2)) + servers + m.group(3).lstrip("\n"),
        template,
        flags=re.S,
    )
    conf = re.sub(r"(stream \{.*?)listen \S+;", lambda m: m.group(1) + f"listen {listen};", conf, count=1, flags=re.S)
    stream, _, http = conf.partition("\nhttp {")
    if tls is None:
        stream = TLS_BLOCK.sub("\n", stream, count=1)
    else:
        stream = re.sub(r"listen \S+ ssl;", f"listen {tls.listen} ssl;", stream, count=1)
    if tls is None or not tls.web_listen:
        http = HTTPS_LINES.sub("", http, count=1)
    else:
        http = re.sub(r"listen \S+ ssl;", f"listen {tls.web_listen} ssl;", http, count=1)
    conf = stream + "\nhttp {" + http if http else stream
    if tls is not None:
        conf = re.sub(r"ssl_certificate \S+;", f"ssl_certificate {tls.certificate};", conf)
        conf = re.sub(r"ssl_certificate_key \S+;", f"ssl_certificate_key {tls.key};", conf)
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
    """python -m gchat.tools.nginxconf [--tls LISTEN CERT KEY [--web-tls LISTEN]] TEMPLATE WORKDIR LISTEN
    HOST:PORT... [--web LISTEN HOST:PORT...] > nginx.conf"""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m gchat.tools.nginxconf", description=__doc__)
    p.add_argument("--tls", nargs=3, metavar=("LISTEN", "CERT", "KEY"),
                   help="the chat's TLS port and the certificate (full chain) and key, PEM; without it, no TLS")
    p.add_argument("--web-tls", metavar="LISTEN", default="", help="with --tls and --web: the https port")
    p.add_argument("--web", nargs="+", metavar="LISTEN HOST:PORT", default=[],
                   help="the browsers' address, then the nodes' web listeners")
    p.add_argument("template", type=Path)
    p.add_argument("workdir", type=Path)
    p.add_argument("listen")
    p.add_argument("nodes", nargs="+", metavar="HOST:PORT")
    args = p.parse_args(argv)
    ups = [(h, int(port)) for h, port in (n.rsplit(":", 1) for n in args.nodes)]
    web_ups = [(h, int(port)) for h, port in (n.rsplit(":", 1) for n in args.web[1:])]
    tls = (Tls(args.tls[0], Path(args.tls[1]).resolve(), Path(args.tls[2]).resolve(), args.web_tls)
           if args.tls else None)
    sys.stdout.write(render(args.template.read_text(), ups, args.listen, args.workdir, web_ups,
                            args.web[0] if args.web else "", tls))


if __name__ == "__main__":
    main()
