#!/usr/bin/env python3
"""One `/api/smart` call that hedged, drawn as a waterfall from its access line (DESIGN.md's reading path).

    python3 bench/waterfall.py > bench/plots/smart-waterfall.json     # run, pick a call, draw it
    python3 bench/waterfall.py --from-line bench/plots/smart-waterfall.json   # draw that line again

It starts `fanout simulator` (over TLS, answering in 100-600 ms) and fanout in front of it with
`--hedge-delay-ms 300`, both on 127.0.0.1, and calls `/api/smart?timeout=1000` one call at a time until
one hedged and a hedge won (if none did within the time limit: one that hedged), leaving out the first
few, which open the pool's connections. It finds that call's access line in fanout's stdout by the trace
id its `traceresponse` header named, prints the line on stdout (progress goes to stderr) and draws it:
one bar per upstream request, from its `start_ms` for its `duration_ms`, labelled with its outcome, with
the hedge, the answer written and the deadline marked.

It builds nothing: it runs target/release/fanout (`cargo build --release --locked`) or `--fanout-bin`.
Python 3.11 standard library, and matplotlib (`pip install -r bench/requirements.txt`) for the picture.
Every process runs in its own session, dies with this script and is stopped by its pid when the run ends,
however it ends (fanoutbench.processes); the calls stop after `--limit-s`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

from fanoutbench.common import BENCH_DIR, BenchError, log
from fanoutbench.measure import Settings, start_servers
from fanoutbench.plot import require_matplotlib
from fanoutbench.processes import Processes, unwind_on_signals
from fanoutbench.scenarios import Scenario
from fanoutbench.servers import FANOUT_BIN, PEER_BIN

SCENARIO = Scenario("smart-waterfall", "one /api/smart call that hedged", latency_ms="100-600",
                    path="/api/smart", timeout_ms=1000, connections=1, quick_connections=1)
HEDGE_DELAY_MS = 300
# The first calls open the pool's connections (TCP and TLS): not drawn, so the picture shows a call as most are.
WARM_UP_CALLS = 3
DEFAULT_OUT = BENCH_DIR / "plots" / "smart-waterfall.png"
# Bar colour by the attempt's outcome; any other outcome (a failure) is drawn red.
COLOURS = {"ok": "#2e8b57", "cancelled": "#a0a0a0", "timeout": "#d08c2a"}
FAILED = "#c8461d"
NOTE = ("cancelled: the answer was decided and nobody waits for this request any more; one already sent may\n"
        "still finish in the background (for up to --upstream-linger-ms) to keep its connection for the next call")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Draw one hedged /api/smart call as a waterfall from its access line.")
    parser.add_argument("--fanout-bin", type=Path, default=FANOUT_BIN,
                        help="the fanout binary (server and simulator); default target/release/fanout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the PNG (default bench/plots/smart-waterfall.png)")
    parser.add_argument("--from-line", type=Path, metavar="FILE",
                        help="draw this access line (the first `access` JSON line in FILE) instead of running")
    parser.add_argument("--limit-s", type=float, default=60.0,
                        help="stop calling after this many seconds (default 60)")
    return parser.parse_args(argv)


def hedged(line: dict) -> bool:
    """Three requests, the last two started after the first, and at least one of them cut off."""
    a = line.get("attempts", [])
    return (len(a) == 3 and a[1]["start_ms"] > a[0]["start_ms"]
            and any(x["outcome"] in ("cancelled", "timeout") for x in a))


def hedge_won(line: dict) -> bool:
    a = line["attempts"]
    return line["status"] == 200 and a[0]["outcome"] != "ok" and any(x["outcome"] == "ok" for x in a[1:])


def call(conn: http.client.HTTPConnection) -> str:
    """One call; returns its trace id, from the `traceresponse` header (00-TRACE-SPAN-FLAGS)."""
    conn.request("GET", SCENARIO.endpoint)
    response = conn.getresponse()
    response.read()
    trace = response.getheader("traceresponse")
    if trace is None:
        raise BenchError(f"{SCENARIO.endpoint} answered {response.status} without a traceresponse")
    return trace.split("-")[1]


def access_line(logfile: Path, trace_id: str, limit_s: float = 5.0) -> str:
    """The access line of the call `trace_id` in fanout's stdout (lines reach it within about 10 ms)."""
    until = time.monotonic() + limit_s
    while time.monotonic() < until:
        for text in logfile.read_text(errors="replace").splitlines():
            if f'"trace_id":"{trace_id}"' in text and '"event":"access"' in text:
                return text
        time.sleep(0.02)
    raise BenchError(f"no access line for trace {trace_id} in {logfile} within {limit_s:g} s")


def find_call(fanout_bin: Path, limit_s: float) -> str:
    """Runs the simulator and fanout, calls until a hedge won, and returns that call's access line."""
    settings = Settings(quick=True, fanout_bin=fanout_bin.resolve(), peer_bin=PEER_BIN, clients={},
                        settle_s=0.0, fanout_args=("--hedge-delay-ms", str(HEDGE_DELAY_MS)))
    with tempfile.TemporaryDirectory(prefix="waterfall-") as tmp, Processes(Path(tmp)) as procs:
        servers = start_servers(procs, SCENARIO, "fanout", settings, Path(tmp))
        servers.sim.close()  # its /stats are not needed
        conn = http.client.HTTPConnection("127.0.0.1", servers.port, timeout=10)
        until, calls, fallback = time.monotonic() + limit_s, 0, None
        try:
            while time.monotonic() < until:
                text = access_line(procs.logfile(servers.server), call(conn))
                line, calls = json.loads(text), calls + 1
                if calls <= WARM_UP_CALLS:
                    continue
                if hedged(line) and hedge_won(line):
                    log(f"call {calls} hedged and a hedge won")
                    return text
                fallback = fallback or (text if hedged(line) else None)
        finally:
            conn.close()
    if fallback is None:
        raise BenchError(f"none of {calls} calls hedged within {limit_s:g} s")
    log(f"no hedge won in {calls} calls; drawing one that hedged")
    return fallback


def read_line(path: Path) -> str:
    for text in path.read_text().splitlines():
        if '"event":"access"' in text:
            return text
    raise SystemExit(f"waterfall: no access line in {path}")


def bar_label(attempt: dict, winner: bool) -> str:
    text = f"{attempt['outcome']}, {attempt['duration_ms']:.0f} ms"
    return text + ": the answer" if winner else text


def draw(line: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attempts = line["attempts"]
    winner = next((i for i, a in enumerate(attempts) if a["outcome"] == "ok"), None)
    names = ["request 1"] + [f"request {i + 1} (hedge)" for i in range(1, len(attempts))]
    fig, ax = plt.subplots(figsize=(9, 3.7), dpi=100)
    for row, (a, name) in enumerate(zip(attempts, names)):
        colour = COLOURS.get(a["outcome"], FAILED)
        ax.barh(row, a["duration_ms"], left=a["start_ms"], height=0.5, color=colour,
                edgecolor="black" if row == winner else colour)
        ax.text(a["start_ms"] + a["duration_ms"] + 8, row, bar_label(a, row == winner),
                va="center", fontsize=9, fontweight="bold" if row == winner else "normal")
    ax.set_yticks(range(len(attempts)), names)
    ax.invert_yaxis()  # the first request on top
    mark_moments(ax, line, len(attempts))
    ax.set_xlim(0, line["timeout_ms"] * 1.12)
    ax.set_xlabel("ms since fanout parsed the request head (the timeout counts from here)")
    what = "a hedge answered" if hedge_won(line) else f"it hedged, status {line['status']}"
    ax.set_title(f"One call, GET {line['endpoint']}?timeout={line['timeout_ms']}: {what}", fontsize=11)
    ax.grid(axis="x", color="#e6e6e6")
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.95)
    fig.text(0.01, 0.01, NOTE, fontsize=8, color="#555555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def mark_moments(ax, line: dict, rows: int) -> None:
    """The hedge (an arrow from the first request's start to the hedges'), the answer written and the
    deadline (vertical lines, named in the legend)."""
    first, hedge = line["attempts"][0]["start_ms"], line["attempts"][1]["start_ms"]
    y = 0.5  # between the first request's row and the first hedge's
    ax.annotate("", xy=(hedge, y), xytext=(first, y),
                arrowprops={"arrowstyle": "->", "color": "#1f5fa8"})
    ax.text(first + 4, y - 0.08, f"hedge delay: {hedge - first:.0f} ms",
            ha="left", va="bottom", fontsize=8.5, color="#1f5fa8")
    ax.axvline(line["duration_ms"], color="black", linewidth=1.2,
               label=f"answer written: {line['duration_ms']:.0f} ms")
    ax.axvline(line["timeout_ms"], color="#c8461d", linestyle="--", linewidth=1.2,
               label=f"deadline: {line['timeout_ms']} ms")
    ax.set_ylim(rows - 0.5, -0.5)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    unwind_on_signals()
    require_matplotlib("waterfall.py")
    if args.from_line:
        text = read_line(args.from_line)
    else:
        if not args.fanout_bin.is_file():
            raise SystemExit(f"waterfall: {args.fanout_bin} is missing (cargo build --release --locked)")
        text = find_call(args.fanout_bin, args.limit_s)
    print(text, flush=True)
    line = json.loads(text)
    if not hedged(line):
        raise SystemExit("waterfall: that call did not hedge (three requests, two started later)")
    draw(line, args.out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        raise SystemExit(f"waterfall: {e}") from None
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        sys.exit(130)
