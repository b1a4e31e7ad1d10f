"""gchat-server, also `python -m gchat`: one chat node. gevent's monkey
patching comes first, before anything imports socket, threading or the
database drivers."""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from gchat import __version__, config, logs  # noqa: E402

log = logging.getLogger("gchat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gchat-server",
        description="A gchat chat node. With no flags: one node on SQLite (gchat.db here) "
        "with an in-process bus. Every flag has a GCHAT_* environment variable.",
    )
    parser.add_argument("--version", action="version", version=f"gchat-server {__version__}")
    config.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = config.from_sources(args)
    except ValueError as e:  # one line: the usage would bury it under 25 lines of flags
        print(f"gchat-server: {e} (see gchat-server --help)", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)

    from gchat import app as app_module
    from gchat.schema import SchemaBehind

    try:
        app = app_module.build(settings)
    except SchemaBehind as e:
        print(f"gchat-server: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a store that cannot be reached: one clear line, not a traceback
        log.debug("start-up failed", exc_info=True)
        print(f"gchat-server: cannot start: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    from gchat.control import AdminSocketError

    # before start(), which logs "ready": a SIGTERM sent as soon as it is
    # read (systemd, a test) must stop the node cleanly, not kill it with
    # the default action (its users left online, its admin socket left behind)
    stop = gevent.event.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stop.set)
    # SIGUSR1 logs "stats connections=.. users=.. greenlets=.. fds=.. rss=.."
    gevent.signal_handler(signal.SIGUSR1, app.listener.log_stats)
    try:
        app.start()
    except AdminSocketError as e:
        print(f"gchat-server: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = settings.bind + (f" or {settings.web_bind} (web_bind)" if settings.web_bind else "")
        print(f"gchat-server: cannot listen on {where}: {e}", file=sys.stderr)
        return 1
    # What start-up made (modules, the engines, the ORM's mappers: about
    # 105,000 objects) lives as long as the process. A full collection
    # walked all of it, 55-58 ms with every greenlet held up, each time the
    # cyclic GC reached its oldest generation (some ten seconds apart in
    # pingpong), against 1-2 ms once frozen (docs/benchmarks.md, "Start-up
    # objects frozen"). Objects made later are collected as before.
    gc.freeze()
    stop.wait()
    log.info("signal received, shutting down")
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
