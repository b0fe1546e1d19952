"""`--self-check`: each load generator against a server whose latency distribution is known.

bench/known_server.py serves classes far apart (80% at once and 20% after 250 ms; a long tail) and
counts its own answers: the truth. Each load generator measures it, and the counts and percentiles'
classes are compared with that truth (bench/README.md, "The self-check"; CI runs it: .ci/bench).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import BENCH_DIR, BenchError, log
from .loadgen import Measured, client_argv, client_env, ms, read_measured
from .processes import Processes, free_port, wait_accepting, wait_finished

KNOWN_SERVER = BENCH_DIR / "known_server.py"


@dataclass(frozen=True)
class Known:
    """A latency distribution served by known_server.py: classes far apart (share:ms), thresholds
    between them, and the percentiles whose class is checked."""
    name: str
    classes: str
    thresholds_ms: tuple[int, ...]
    percentiles: tuple[float, ...]


KNOWN = (
    Known("80/20", "0.8:0,0.2:250", (100,), (50, 90, 99)),
    Known("long tail", "0.95:0,0.045:250,0.005:1000", (100, 600), (50, 90, 99, 99.9)),
)
SELF_CHECK_CONNECTIONS, SELF_CHECK_S = 50, 10
SELF_CHECK_TOLERANCE = 0.01  # of the responses


def self_check(clients: dict[str, str]) -> int:
    """Measures every KNOWN distribution with every client and prints the server's own counts
    beside the measured ones. A count off by more than 1% of the responses, or a percentile in
    the wrong class, fails; wrk's latency figures are shown but not judged: they come from its
    corrected histogram, and the bench takes none of its latency counts as per-request."""
    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="fanout-self-check-") as tmp:
        for known in KNOWN:
            for client, path in clients.items():
                try:
                    truth, measured = measure_known(known, client, path, Path(tmp))
                except BenchError as e:
                    raise SystemExit(f"bench: self-check {known.name}/{client}: {e}") from e
                for row in compare_known(known, truth, measured):
                    rows.append((known.name, client, *row))
                    failed += row[-1] == "FAILED"
    widths = (10, 7, 10, 14, 10, 8)
    head = ("known", "client", "figure", "truth", "measured", "off", "verdict")
    print("\n".join(" ".join(f"{cell:<{w}}" if i < 3 else f"{cell:>{w}}" if i < 6 else cell
                             for i, (cell, w) in enumerate(zip(row, widths + (0,))))
                    for row in [head] + rows))
    passed = sum(row[-1] == "ok" for row in rows)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def measure_known(known: Known, client: str, path: str, workdir: Path) -> tuple[dict, Measured]:
    """Serves `known` on a fresh port, measures it with `client` for SELF_CHECK_S, and returns
    the server's counts per class (ms -> answers) and what the client measured."""
    rundir = workdir / (re.sub(r"\W+", "-", known.name) + f"-{client}")
    rundir.mkdir()
    thresholds_us = [ms * 1000 for ms in known.thresholds_ms]
    slowest_s = max(int(c.split(":")[1]) for c in known.classes.split(",")) / 1000
    with Processes(rundir) as procs:
        port = free_port()
        server = procs.start("known-server", [sys.executable, str(KNOWN_SERVER), "--port",
                                              str(port), "--classes", known.classes])
        wait_accepting(procs, server, "known_server.py", port)
        log(f"self-check {known.name}/{client}: -c {SELF_CHECK_CONNECTIONS} -d {SELF_CHECK_S}s")
        before = known_counts(port)
        started = time.monotonic()
        load = procs.start(client, client_argv(client, path, SELF_CHECK_CONNECTIONS, SELF_CHECK_S,
                                               f"http://127.0.0.1:{port}/", rundir, measured=True),
                           env=client_env(thresholds_us, None))
        wait_finished(procs, load, client, SELF_CHECK_S)
        time.sleep(slowest_s + 0.5)  # the calls cut off at the end are counted as cut off
        after = known_counts(port)
        measured = read_measured(client, rundir, thresholds_us, None, started,
                                 SELF_CHECK_CONNECTIONS)
    truth = {int(ms): n - before["classes"][ms] for ms, n in after["classes"].items()}
    return truth, measured


def known_counts(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/counts")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def compare_known(known: Known, truth: dict[int, int], measured: Measured) -> list[tuple]:
    """(figure, truth, measured, off, verdict) rows: the responses, the responses at or below each
    threshold, and the class of each percentile."""
    total = sum(truth.values())
    judge_latency = not measured.corrected

    def verdict(ok: bool, judged: bool = True) -> str:
        if judged:
            return "ok" if ok else "FAILED"
        return f"{'right' if ok else 'wrong'}, not judged: corrected histogram"

    def count_row(figure: str, true: int, got: int, judged: bool = True) -> tuple:
        off = (got - true) / total if total else 0.0
        return (figure, f"{true:,}", f"{got:,}", f"{off:+.2%}",
                verdict(abs(off) <= SELF_CHECK_TOLERANCE, judged))

    def class_of(us: float) -> int:
        """The class a latency falls in: the number of thresholds below it."""
        return sum(us > t * 1000 for t in known.thresholds_ms)

    delays = sorted(truth)
    rows = [count_row("responses", total, measured.requests)]
    for t in known.thresholds_ms:
        rows.append(count_row(f"<={t} ms", sum(n for ms, n in truth.items() if ms < t),
                              measured.at_most[t * 1000], judge_latency))
    for p in known.percentiles:
        rank, cumulative = math.ceil(p / 100 * total), 0
        expected = next(i for i, ms in enumerate(delays)
                        if (cumulative := cumulative + truth[ms]) >= rank)
        got = class_of(measured.percentiles_us[p])
        rows.append((f"p{p:g}", f"{delays[expected]} ms class",
                     f"{ms(measured.percentiles_us[p]):g} ms", "",
                     verdict(got == expected, judge_latency)))
    return rows
