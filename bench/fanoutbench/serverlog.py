"""fanout's own count of late answers, from its access log (`server_log` scenarios).

Each access line carries `overshoot_ms`: how long after its deadline the answer was written, as fanout's
own clock saw it, negative when early. Unlike the client's latency, it leaves out the time the request
waited in the load generator and the kernel before fanout parsed it, and the answer's way back: it is
what fanout can be held to. The `/metrics` histogram has the same figure in buckets; the log has every
answer, so the worst is exact and the late ones can be placed in time (the first wave, a reset).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

from .scenarios import LATE_MS


def late_answers(logfile: Path, since_wall_s: float) -> dict:
    """Figures over the access lines logged from `since_wall_s` (Unix time) on: answers with a
    deadline, how many were later than each of LATE_MS past it (count and share), the worst, the late
    ones (over the first of LATE_MS) by whole second since `since_wall_s`, and how many of those had
    no upstream answer at all (every attempt `timeout`: the right answer was ready, only late)."""
    overshoots, late_by_second, late_unanswered = [], Counter(), 0
    for line in logfile.read_text(errors="replace").splitlines():
        if '"event":"access"' not in line:
            continue
        entry = json.loads(line)
        at = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
        if at < since_wall_s or "overshoot_ms" not in entry:
            continue
        overshoot = entry["overshoot_ms"]
        overshoots.append(overshoot)
        if overshoot > LATE_MS[0]:
            late_by_second[int(at - since_wall_s)] += 1
            late_unanswered += all(a["outcome"] == "timeout" for a in entry.get("attempts", []))
    n = len(overshoots)
    figures = {"answers": n, "max_overshoot_ms": max(overshoots, default=None)}
    for late in LATE_MS:
        count = sum(o > late for o in overshoots)
        figures[f"over_{late}ms"] = {"count": count, "share": round(count / n, 5) if n else None}
    figures["late_by_second"] = dict(sorted(late_by_second.items()))
    figures["late_with_no_upstream_answer"] = late_unanswered
    return figures
