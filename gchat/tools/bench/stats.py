"""Numbers: latency samples and their percentiles, and what /proc says about
the server (CPU time, resident memory) and about the bench itself."""

from __future__ import annotations

import os
import resource
from array import array
from collections.abc import Iterable

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Latencies:
    """Samples in microseconds, kept whole (an array of 4-byte ints: ten
    million samples are 40 MB) so that the percentiles are exact."""

    def __init__(self) -> None:
        self.us = array("I")

    def add_ns(self, ns: int) -> None:
        self.us.append(max(0, min(ns // 1000, 0xFFFFFFFF)))

    def add_s(self, seconds: float) -> None:
        self.us.append(max(0, min(int(seconds * 1e6), 0xFFFFFFFF)))

    def dump(self) -> bytes:
        return self.us.tobytes()


def percentiles(chunks: Iterable[bytes], points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """Exact percentiles in milliseconds of the merged samples."""
    merged = array("I")
    for chunk in chunks:
        merged.frombytes(chunk)
    out: dict[str, float] = {"samples": len(merged)}
    if not merged:
        return out
    ordered = sorted(merged)
    for p in points:
        i = min(len(ordered) - 1, int(len(ordered) * p / 100))
        out[f"p{p:g}".replace(".", "")] = round(ordered[i] / 1000, 3)
    out["max"] = round(ordered[-1] / 1000, 3)
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used, its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_rss(pid: int) -> int:
    """Resident bytes of the process."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raise_fd_limit(want: int) -> int:
    """Raise this process's open-file limit towards `want` (the hard limit
    too, when running as root); returns the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    for new_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
