"""The load generators: oha (every response's own latency) and wrk (a corrected histogram).

Their command lines and environment, and what each run saw, read back from their output into one
`Measured`, the same fields whichever tool measured. bench/README.md, "Load generators", says which
measures what and why; bench/wrk.lua is wrk's side of it.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .common import BENCH_DIR, BenchError

WRK_SCRIPT = BENCH_DIR / "wrk.lua"
CLIENTS = ("oha", "wrk")
# oha measures every scenario unless --client says otherwise: it keeps each response's own latency,
# and in `cpu`, where the load generator's CPU matters most, it cost little more than wrk
# (bench/README.md, "Load generators").
DEFAULT_CLIENT = "oha"
INSTALL = {
    "oha": "cargo install oha --locked   (about 6 minutes on 2 cores; it lands in ~/.cargo/bin)",
    "wrk": "apt-get install wrk          (Debian's package, with the LuaJIT bench/wrk.lua needs)",
}
# The percentiles every run reports, and the grid --plot draws (p = 1 - 10^(-k/10): even steps
# on the log(1/(1-p)) axis, from 60% to 99.999%, and 50%), both as the percentage p.
PERCENTILES = (50, 90, 99, 99.9, 99.99)
CURVE = (50.0, *(round(100 * (1 - 10 ** (-k / 10)), 6) for k in range(4, 51)))
OHA_DEADLINE_ERROR = "aborted due to deadline"  # oha's name for a call it cut off at the end


def find_client(name: str) -> str:
    """The load generator's path: on PATH, or where `cargo install` puts it. Exits with what to
    install when it is missing."""
    found = shutil.which(name) or shutil.which(name, path=str(Path.home() / ".cargo" / "bin"))
    if not found:
        raise SystemExit(f"bench: {name} is not installed. Install it with\n    {INSTALL[name]}")
    return found


def ms(us: float) -> float:
    return round(us / 1000, 1)


@dataclass
class Measured:
    """What one load-generator run saw, the same fields whichever tool measured it."""
    client: str
    corrected: bool  # latencies from wrk's histogram, corrected for coordinated omission
    requests: int  # completed responses (any status)
    duration_s: float
    statuses: dict[str, int]
    errors: dict[str, int]
    window_calls: int | None  # responses completed inside the measurement window
    # The latency figures are over these responses (oha: those sent from the window's start on;
    # wrk: all), with their statuses: the denominators of late_share and client_shed.
    latency_calls: int
    latency_statuses: dict[str, int]
    percentiles_us: dict[float, float]  # p (PERCENTILES and CURVE) -> latency, microseconds
    max_us: float
    at_most: dict[int, int]  # threshold (us) -> responses at or below it
    # (oha) The same responses' latencies corrected as wrk 4 would: what the wrk figures would
    # have been on these very samples, so the correction's part of a difference is known.
    as_wrk: Measured | None = None

    def latency_ms(self) -> dict[str, float]:
        return {**{f"p{p:g}": ms(self.percentiles_us[p]) for p in PERCENTILES},
                "max": ms(self.max_us)}

    def curve_ms(self) -> list[list[float]]:
        """[percentile, ms] for --plot, as far as the responses reach (1/(1-p) at most n)."""
        return [[p, ms(self.percentiles_us[p])] for p in CURVE
                if self.latency_calls and 100 / (100 - p) <= self.latency_calls]


def client_argv(client: str, path: str, connections: int, seconds: float, url: str,
                rundir: Path, measured: bool) -> list[str]:
    """Closed loop with both tools: `connections` keep-alive connections, each sending its next
    request the moment it has read an answer, for `seconds`; no rate limit."""
    if client == "wrk":
        # --timeout longer than the run: wrk's own timeout never hides a late answer.
        return [path, "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s",
                "--timeout", f"{max(10, seconds + 5):g}s", "--latency", "-s", str(WRK_SCRIPT), url]
    argv = [path, "-c", str(connections), "-z", f"{seconds:g}s", "--no-tui", "--worker-threads",
            "2", "--output-format", "json", "--output", str(rundir / "oha.json"), url]
    return argv + (["--db-url", str(rundir / "oha.sqlite")] if measured else [])


def client_env(thresholds_us: list[int], window: tuple[float, float] | None) -> dict:
    """wrk's script reads its thresholds, percentiles and window from the environment."""
    env = dict(os.environ,
               BENCH_LATENCY_THRESHOLDS_US=",".join(map(str, thresholds_us)),
               BENCH_PERCENTILES=",".join(map(str, PERCENTILES + CURVE)))
    if window:
        env["BENCH_WINDOW_NS"] = ",".join(str(int(t * 1e9)) for t in window)
    return env


def read_measured(client: str, rundir: Path, thresholds_us: list[int],
                  window: tuple[float, float] | None, started: float, connections: int) -> Measured:
    if client == "wrk":
        return wrk_measured((rundir / "wrk.log").read_text(errors="replace"))
    return oha_measured(rundir, thresholds_us, window, started, connections)


def wrk_measured(output: str) -> Measured:
    report = next((json.loads(line[len("BENCH_JSON "):]) for line in output.splitlines()
                   if line.startswith("BENCH_JSON ")), None)
    if report is None:
        raise BenchError(f"no BENCH_JSON line in wrk's output:\n{output[-2000:]}")
    return Measured(
        client="wrk", corrected=True, requests=report["requests"],
        duration_s=report["duration_us"] / 1e6, statuses=report["statuses"],
        errors={k: report["errors"].get(k, 0) for k in ("connect", "read", "write", "timeout")},
        window_calls=report["window_calls"],
        latency_calls=report["requests"], latency_statuses=report["statuses"],
        percentiles_us={row["p"]: row["us"] for row in report["percentiles"]},
        max_us=report["latency_us"]["max"],
        at_most={row["us"]: row["count"] for row in report["at_most"]})


def oha_measured(rundir: Path, thresholds_us: list[int], window: tuple[float, float] | None,
                 started: float, connections: int) -> Measured:
    """Every response oha read, from its SQLite file (table `oha`: start and end in seconds since
    oha's own start, `duration` = end - start, `status`): exact counts and nearest-rank
    percentiles. oha's start is a few ms after `started` (when run.py launched it), so the window,
    taken relative to `started`, is off by that much: nothing next to a 13 s window.

    With a window, the latency figures are over the requests sent from its start on: oha's time
    for a connection's first request includes opening the connection (wrk's does not), and
    thousands of connections open at once at the start of a run."""
    try:
        summary = json.loads((rundir / "oha.json").read_text())
        with contextlib.closing(sqlite3.connect(rundir / "oha.sqlite")) as db:
            rows = db.execute("SELECT start, end, duration, status FROM oha").fetchall()
    except (OSError, ValueError, sqlite3.Error) as e:
        raise BenchError(f"oha's results are unreadable: {e}") from e
    window_calls, timed = None, rows
    if window:
        w0, w1 = (t - started for t in window)
        window_calls = sum(1 for _s, end, _d, _st in rows if w0 <= end < w1)
        timed = [row for row in rows if row[0] >= w0]
    latencies = sorted(duration * 1e6 for _s, _e, duration, _st in timed)
    duration_s = summary["summary"]["total"]

    def by_status(some: list[tuple]) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(row[3] for row in some).items())}
    errors = dict(summary.get("errorDistribution") or {})
    measured = Measured(
        client="oha", corrected=False, requests=len(rows), duration_s=duration_s,
        statuses=by_status(rows), errors={"cut_off": errors.pop(OHA_DEADLINE_ERROR, 0), **errors},
        window_calls=window_calls, latency_calls=len(latencies),
        latency_statuses=by_status(timed), **sample_figures(latencies, thresholds_us))
    if len(rows) >= connections:
        # wrk's interval: its run time / (responses / connections, an integer division), in us.
        interval_us = duration_s * 1e6 / (len(rows) // connections)
        corrected = sorted(latencies + wrk_synthetic_samples(latencies, interval_us))
        measured.as_wrk = dataclasses.replace(
            measured, client="oha as wrk", corrected=True, as_wrk=None,
            **sample_figures(corrected, thresholds_us, scale_to=len(latencies)))
    return measured


def sample_figures(latencies: list[float], thresholds_us: list[int],
                   scale_to: int | None = None) -> dict:
    """Nearest-rank percentiles, the maximum and the counts at or below each threshold of sorted
    latencies (us). With `scale_to`, counts are the share at or below times `scale_to`, as
    bench/wrk.lua's rank arithmetic makes of a corrected histogram (its ranks go to the number of
    responses, not of samples)."""
    n = len(latencies)

    def at_percentile(p: float) -> float:
        return latencies[max(0, math.ceil(p / 100 * n) - 1)] if n else 0.0

    def count(us: int) -> int:
        below = bisect.bisect_right(latencies, us)
        return round(below * scale_to / n) if scale_to is not None and n else below
    return {"percentiles_us": {p: at_percentile(p) for p in PERCENTILES + CURVE},
            "max_us": latencies[-1] if n else 0.0,
            "at_most": {us: count(us) for us in thresholds_us}}


def wrk_synthetic_samples(latencies: list[float], interval_us: float) -> list[float]:
    """The samples wrk 4's stats_correct adds to its histogram (wrk's stats.c): for each latency
    n of at least twice the interval I, n - I, n - 2I, ... while above I."""
    added = []
    for n in latencies:
        if n >= 2 * interval_us:
            added.extend(n - k * interval_us for k in range(1, math.ceil(n / interval_us) - 1))
    return added
