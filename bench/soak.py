#!/usr/bin/env python3
"""fanout's soak: does a long run under load leave anything behind?

    python3 bench/soak.py --minutes N [--plot FILE] [--no-build] [--fanout-bin PATH]

For N minutes, 1,000 callers (oha: 250 keep-alive connections on each of the four endpoints,
`timeout=1000`, closed loop) and 20 clients that leave mid-call (each sends a request to one of
the endpoints and, 5 to 90 ms later, before the upstream's 100 ms minimum could answer, closes its
connection, half of them with a reset) drive fanout against a simulated upstream whose requests
fail 10% of the time in every way it knows (status 500, invalid JSON, JSON without `time`, reset,
hang, slow body) and which also closes each connection after 100 responses and any connection
idle for 3 s (under fanout's 4 s pool idle timeout: stale pooled connections too).

Every 30 s it samples fanout's resident memory, open file descriptors and threads (/proc) and its
calls in flight and upstream pool connections (/metrics). Once the load stops it waits up to 30 s
for the descriptors to come back to where they were before the load, then sends SIGTERM. The
verdict, on stderr with every sample, exits 1 when any of these holds:

  - RSS grew more than 2% from the end of the first minute to the end of the load (with
    `--minutes 1` the two are the same sample: that check needs a longer run; the line also
    gives, not judged, the least-squares trend over every sample from the first minute on, and
    RSS once the load has stopped beside its baseline: a leak would stay there);
  - the open descriptors did not return to their baseline once the load stopped;
  - /api/within-timeout answered anything but 200 (an error on the connection counts too);
  - a line of fanout's (or the simulator's) output says "panic";
  - fanout did not exit 0 on SIGTERM within 30 s.

fanout is the binary the image ships (the Dockerfile's static musl build, made here with `cargo build
--release --locked --target x86_64-unknown-linux-musl`; it needs musl-tools), so the memory judged is the
memory deployed. Built for glibc, fanout's RSS tells more about glibc's arenas than about fanout: in an
8-minute run, from minute 2 to minute 7, glibc's heap in use stayed at 45.0 MB (`malloc_stats`) while the
memory it held from the system grew from 58.8 to 60.3 MB, and after the load it kept 62.7 MiB of RSS,
where the musl build went back to 3.6 MiB (baseline 2.4). `--fanout-bin target/release/fanout`
measures the glibc build all the same.

The simulator runs as a process of its own (`fanout simulator`), not in fanout's (`--upstream
simulated`): its memory (held connections, hanging requests) then stays out of the RSS this judges,
and fanout speaks TLS to it over real sockets, as to the real upstream. fanout keeps its access log
on, as deployed; the script reads it from a pipe and keeps only the other lines (an hour of access
lines is gigabytes).

It also counts the calls fanout recorded as `499` (its caller gone) beside the clients that left.
The samples go to stdout as JSON lines, then one line with the verdict. `--plot FILE` draws RSS and
descriptors over time (matplotlib, optional: `pip install -r bench/requirements.txt`). Needs oha
(`cargo install oha --locked`). Loopback only; every process runs in its own session and is
stopped by pid when the script ends, whatever happens (fanoutbench's `Processes`); every wait is
bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path

from fanoutbench.common import REPO, BenchError
from fanoutbench.metrics import SERVER_DURATION, scrape
from fanoutbench.plot import require_matplotlib
from fanoutbench.processes import Processes, free_port
from fanoutbench.procfs import memory_mib, open_fds, threads
from fanoutbench.servers import cargo_build
from fanoutbench.suite import git_commit
from procs import find_tool, start_fanout, start_simulator

ENDPOINTS = ("/api/all", "/api/first", "/api/within-timeout", "/api/smart")
JUDGED = "/api/within-timeout"  # never an upstream error, never 5xx: anything but 200 is fanout's
TIMEOUT_MS = 1000
CALLERS = 1000
LEAVERS = 20
LEAVE_AFTER_S = (0.005, 0.090)  # before the upstream's 100 ms minimum latency
SIMULATOR_FLAGS = ("--latency-ms", "100-600", "--failure-rate", "0.1", "--close-after", "100",
                   "--idle-close-ms", "3000")
SAMPLE_EVERY_S = 30
RSS_GROWTH_LIMIT = 0.02
# After the load: in-flight calls end by their deadline (1 s), background exchanges within the
# linger time (1 s), idle upstream connections after 4 s, lingering closes after 2 s.
SETTLE_LIMIT_S = 30
STOP_LIMIT_S = 30
PANIC = re.compile(rb"panic", re.I)
STATIC_TARGET = "x86_64-unknown-linux-musl"
STATIC_BIN = REPO / "target" / STATIC_TARGET / "release" / "fanout"


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class OutputReader(threading.Thread):
    """Reads fanout's stdout to its end: counts the lines, keeps those that say panic and the
    last 200 others that are not access lines."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines, self.panics, self.other = pipe, 0, [], deque(maxlen=200)

    def run(self) -> None:
        rest = b""
        while chunk := self.pipe.read1(1 << 16):
            *whole, rest = (rest + chunk).split(b"\n")
            self.lines += len(whole)
            if PANIC.search(chunk) or chunk.count(b'"event":"access"') < len(whole):
                for line in whole:
                    if PANIC.search(line):
                        self.panics.append(line.decode(errors="replace"))
                    elif b'"event":"access"' not in line:
                        self.other.append(line.decode(errors="replace"))


def sample(pid: int, admin: int, t0: float, phase: str) -> dict:
    """One sample of fanout: /proc first, so the scrape's own connection is not counted."""
    figures = {"t_s": round(time.monotonic() - t0, 1), "phase": phase,
               "rss_mib": memory_mib(pid)["VmRSS"], "fds": open_fds(pid), "threads": threads(pid)}
    samples = scrape(admin)

    def value(name: str, *label: str) -> int:
        return next((int(v) for n, labels, v in samples if n == name and set(label) <= labels), -1)
    figures.update(in_flight=value("fanout_http_server_active_requests"),
                   pool_active=value("fanout_upstream_pool_connections", ("state", "active")),
                   pool_idle=value("fanout_upstream_pool_connections", ("state", "idle")))
    print(json.dumps(figures), flush=True)
    log("  ".join(f"{k} {v}" for k, v in figures.items()))
    return figures


async def leaver(port: int, until: float, rng: random.Random, left: Counter) -> None:
    """A client that leaves mid-call, again and again: sends a request, then closes (FIN) or
    resets (RST, SO_LINGER 0) its connection before any answer can come."""
    while time.monotonic() < until:
        target = f"{rng.choice(ENDPOINTS)}?timeout={TIMEOUT_MS}"
        how = rng.choice(("closed", "reset"))
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(rng.uniform(*LEAVE_AFTER_S))
            if how == "reset":
                writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            left[how] += 1
        except OSError:
            left["connect_failed"] += 1
        await asyncio.sleep(0.1)


async def drive(pid: int, port: int, admin: int, t0: float, seconds: float) -> tuple[list, Counter]:
    """Runs the leavers and samples every SAMPLE_EVERY_S until `seconds` after t0; the last
    sample is taken a second before the end, while the callers are still at work."""
    left: Counter = Counter()
    rng = random.Random(1)
    leavers = [asyncio.create_task(leaver(port, t0 + seconds, random.Random(rng.random()), left))
               for _ in range(LEAVERS)]
    samples, due = [], [*range(0, int(seconds) - 1, SAMPLE_EVERY_S), seconds - 1]
    for at in due:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        samples.append(await asyncio.to_thread(sample, pid, admin, t0, "load"))
    await asyncio.gather(*leavers)
    return samples, left


def oha_result(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"statuses": {}, "errors": {f"no report from oha: {e}": 1}, "calls_per_s": 0}
    return {"statuses": report.get("statusCodeDistribution") or {},
            "errors": report.get("errorDistribution") or {},
            "calls_per_s": round(report["summary"]["requestsPerSec"])}


def verdict(samples: list[dict], baseline: dict, after: dict, results: dict, panics: list,
            exit_code: int | None) -> list[tuple[str, bool, str]]:
    loaded = [s for s in samples if s["phase"] == "load"]
    first = next(s for s in loaded if s["t_s"] >= 59 or s is loaded[-1])
    end = loaded[-1]
    growth = end["rss_mib"] / first["rss_mib"] - 1
    rss_note = " (the same sample: a 1-minute run cannot judge growth)"
    steady = [s for s in loaded if s["t_s"] >= first["t_s"]]
    if len(steady) >= 3:
        # Not judged: RSS follows the upstream connections open at the instant (each TLS connection
        # holds its buffers), so two samples can differ by more than 2% with nothing leaking; a
        # least-squares line over every sample from the first minute on shows a trend through that.
        slope = statistics.linear_regression([s["t_s"] / 3600 for s in steady],
                                             [s["rss_mib"] for s in steady]).slope
        rss_note = f"; trend from the first minute on: {slope:+.2f} MiB/h (least squares, not judged)"
    elif first is not end:
        rss_note = ""
    rss_note += f"; {after['rss_mib']:.1f} MiB after the load (baseline {baseline['rss_mib']:.1f})"
    judged = results[JUDGED]
    not_200 = {k: v for k, v in judged["statuses"].items() if k != "200"}
    return [
        ("rss", growth <= RSS_GROWTH_LIMIT,
         f"{first['rss_mib']:.1f} MiB at {first['t_s']:.0f} s, {end['rss_mib']:.1f} MiB at "
         f"{end['t_s']:.0f} s: {growth:+.2%} (limit +{RSS_GROWTH_LIMIT:.0%}){rss_note}"),
        ("fds", after["fds"] <= baseline["fds"],
         f"baseline {baseline['fds']}, peak {max(s['fds'] for s in samples)}, "
         f"{after['fds']} at {after['t_s']:.0f} s, after the load"),
        ("within-timeout", not not_200 and not judged["errors"],
         f"statuses {judged['statuses']}, errors {judged['errors']}"),
        ("panic", not panics, f"{len(panics)} lines" + (f", first: {panics[0]}" if panics else "")),
        ("sigterm", exit_code == 0, f"exit status {exit_code}"),
    ]


def plot(samples: list[dict], load_s: float, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    minutes = [s["t_s"] / 60 for s in samples]
    fig, (rss, fds) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    rss.plot(minutes, [s["rss_mib"] for s in samples], marker=".", color="tab:blue")
    first = next((s for s in samples if s["phase"] == "load" and s["t_s"] >= 59), None)
    if first:
        rss.axhline(first["rss_mib"] * (1 + RSS_GROWTH_LIMIT), color="tab:red", linestyle="--",
                    label=f"+{RSS_GROWTH_LIMIT:.0%} over the end of the first minute")
        rss.legend(loc="lower right")
    rss.set_ylabel("resident memory (MiB)")
    rss.set_ylim(bottom=0)
    fds.plot(minutes, [s["fds"] for s in samples], marker=".", color="tab:orange",
             label="open file descriptors")
    fds.plot(minutes, [s["pool_active"] + s["pool_idle"] for s in samples], marker=".",
             color="tab:green", label="upstream pool connections")
    fds.set_ylabel("count")
    fds.set_xlabel("minutes since the load started")
    fds.legend(loc="center left")
    for ax in (rss, fds):
        ax.axvline(load_s / 60, color="grey", linestyle=":")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log(f"chart: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long the load runs")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="draw RSS and fds into FILE")
    parser.add_argument("--no-build", action="store_true", help="use the binary as it is")
    parser.add_argument("--fanout-bin", type=Path, default=STATIC_BIN,
                        help="default: the static musl build, which the image ships")
    args = parser.parse_args()
    if args.plot:
        require_matplotlib()  # before an hour of load, not after
    load_s = args.minutes * 60
    commit = git_commit()  # what was built, before a long run during which the tree may change
    oha = find_tool("oha", "cargo install oha --locked")
    if not args.no_build and args.fanout_bin == STATIC_BIN:
        cargo_build("--locked", "--target", STATIC_TARGET,
                    hint=f": it needs `rustup target add {STATIC_TARGET}` and musl-tools "
                         "(apt-get install musl-tools); or pass --fanout-bin")

    with tempfile.TemporaryDirectory(prefix="fanout-soak-") as tmp, Processes(Path(tmp)) as procs:
        upstream = start_simulator(procs, args.fanout_bin, *SIMULATOR_FLAGS)
        port, admin = free_port(), free_port()
        fanout = start_fanout(procs, "fanout", args.fanout_bin, upstream, port, admin,
                              stdout=subprocess.PIPE)
        output = OutputReader(fanout.stdout)
        output.start()
        t0 = time.monotonic()
        baseline = sample(fanout.pid, admin, t0, "baseline")
        log(f"load: {CALLERS} callers over {', '.join(ENDPOINTS)} and {LEAVERS} leaving "
            f"mid-call, for {args.minutes:g} min")
        callers = {path: procs.start(f"oha{path.replace('/', '-')}", [
            oha, "-c", str(CALLERS // len(ENDPOINTS)), "-z", f"{load_s:g}s", "--no-tui",
            "--wait-ongoing-requests-after-deadline", "--output-format", "json",
            "--output", f"{tmp}/{path.replace('/', '-')}.json",
            f"http://127.0.0.1:{port}{path}?timeout={TIMEOUT_MS}"]) for path in ENDPOINTS}
        samples, left = asyncio.run(drive(fanout.pid, port, admin, t0, load_s))
        for proc in callers.values():
            procs.stop(proc, grace_s=30, sig=None)  # oha ends by itself
        results = {path: oha_result(Path(tmp) / f"{path.replace('/', '-')}.json")
                   for path in ENDPOINTS}
        for path, result in results.items():
            log(f"{path}: {result['calls_per_s']} calls/s, statuses {result['statuses']}, "
                f"errors {result['errors']}")

        settle_until = time.monotonic() + SETTLE_LIMIT_S
        while True:
            after = sample(fanout.pid, admin, t0, "after")
            samples.append(after)
            if after["fds"] <= baseline["fds"] or time.monotonic() > settle_until:
                break
            time.sleep(1)
        # Calls fanout dropped because their client had gone (a fanout that watches the socket).
        left["recorded_499"] = int(sum(
            v for n, labels, v in scrape(admin) if n == f"{SERVER_DURATION}_count"
            and ("http_response_status_code", "499") in labels))
        log(f"left mid-call: {dict(left)}")
        exit_code = procs.stop(fanout, grace_s=STOP_LIMIT_S)
        output.join(timeout=10)
        logs = [(procs.logdir / f"{name}.log").read_text(errors="replace")
                for name in ("fanout", "simulator")]
        panics = output.panics + [line for text in logs for line in text.splitlines()
                                  if PANIC.search(line.encode())]
        if exit_code != 0:
            log("fanout's last lines:\n" + "\n".join(output.other) + logs[0])

    checks = verdict(samples, baseline, after, results, panics, exit_code)
    failed = [name for name, ok, _ in checks if not ok]
    for name, ok, detail in checks:
        log(f"{'ok' if ok else 'FAILED':<6} {name:<15} {detail}")
    print(json.dumps({"verdict": "pass" if not failed else "fail", "failed": failed,
                      "minutes": args.minutes, "commit": commit, "results": results,
                      "left_mid_call": dict(left), "output_lines": output.lines}), flush=True)
    print(f"soak: {len(checks) - len(failed)} passed, {len(failed)} failed", file=sys.stderr)
    if args.plot:
        plot([baseline, *samples], load_s, args.plot,
             f"fanout soak: {CALLERS:,} callers + {LEAVERS} leaving mid-call, 10% upstream faults, "
             f"{args.minutes:g} min\n{commit}, {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} cores (the dotted line: the load stops)")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"soak: {e}")
