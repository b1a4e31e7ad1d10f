"""Latency against load, from scripts/bench-sweep's reports.

    python scripts/plot_bench.py [docs/bench] [docs/bench/latency.png]

Left: one-to-one pingpong, p50 and p99 against the number of pairs (the
load of a closed loop), each point marked with the messages/s delivered. Right: group chat of 50, p50 and p99
against offered messages per second, with the C++ original's figures
(from issue 6) as reference marks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else src / "latency.png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    # closed loop: the load is the number of pairs; each point is annotated
    # with the delivered messages per second it reached
    pp = sorted(load(src / "pingpong.jsonl"), key=lambda r: r["pairs"])
    if pp:
        x = [r["pairs"] for r in pp]
        left.plot(x, [r["latency_ms"]["p50"] for r in pp], "o-", label="gchat p50")
        left.plot(x, [r["latency_ms"]["p99"] for r in pp], "s--", label="gchat p99")
        for r in pp:
            left.annotate(f"{r['delivered_per_s'] / 1000:.0f}k/s", (r["pairs"], r["latency_ms"]["p50"]),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)
    left.plot([50], [1.5], "kx", label="C++ original p50 (30k/s)")
    left.plot([50], [4.6], "k+", label="C++ original p99")
    left.set(title="one-to-one pingpong (closed loop)", xlabel="pairs", ylabel="latency (ms)",
             xscale="log", yscale="log")
    left.legend(fontsize=8)

    gr = sorted(load(src / "group.jsonl"), key=lambda r: r["offered_msgs_per_s"])
    if gr:
        x = [r["offered_msgs_per_s"] for r in gr]
        right.plot(x, [r["latency_ms"]["p50"] for r in gr], "o-", label="gchat p50")
        right.plot(x, [r["latency_ms"]["p99"] for r in gr], "s--", label="gchat p99")
    right.plot([100], [18], "kx", label="C++ original p50 (18 ms)")
    right.plot([100], [29], "k+", label="C++ original p99 (29 ms)")
    right.set(title="group chat, 50 members", xlabel="offered messages/s", ylabel="latency (ms)", yscale="log")
    right.legend(fontsize=8)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
