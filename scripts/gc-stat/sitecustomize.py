"""Time a node's cyclic garbage collections (docs/benchmarks.md, "Start-up
objects frozen"). Not part of gchat: put this directory on PYTHONPATH when
starting a node, e.g.

    PYTHONPATH=scripts/gc-stat GCHAT_GC_STAT=/tmp/gc scripts/bench-node 6000

and every 2 s $GCHAT_GC_STAT/<pid>.txt holds, per generation, the number of
collections and the CPU seconds they took, and the objects left to walk."""

import gc
import os
import threading
import time

_OUT = os.environ.get("GCHAT_GC_STAT", "/tmp")
_started: dict[int, float] = {}
_totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}


def _timed(phase: str, info: dict[str, int]) -> None:
    generation = info["generation"]
    if phase == "start":
        _started[generation] = time.process_time()
    else:
        total = _totals[generation]
        total[0] += 1
        total[1] += time.process_time() - _started.get(generation, time.process_time())


def _write() -> None:
    while True:
        time.sleep(2)
        with open(os.path.join(_OUT, f"{os.getpid()}.txt"), "w") as f:
            f.write(repr({g: (n, round(s, 4)) for g, (n, s) in _totals.items()})
                    + f" objects={len(gc.get_objects())}\n")


gc.callbacks.append(_timed)
threading.Thread(target=_write, daemon=True).start()
