#!/usr/bin/env python3
"""How close to its deadline each endpoint answers when the upstream hangs.

    python3 bench/deadlines.py [--calls 50] [--timeout-ms 250] [--fanout-bin PATH]

Starts the simulated upstream with every request hanging and fanout in front of it, then makes
`--calls` sequential calls per endpoint on one keep-alive connection and prints, per endpoint, one
JSON line: status counts and the time from sending the request to reading the whole answer (min,
median, p90, max, in ms). Unloaded on purpose: it measures the deadline mechanism itself; the
benchmark's `overshoot` scenario measures it under load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENDPOINTS = ("/api/all", "/api/first", "/api/within-timeout", "/api/smart")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(port: int, seconds: float = 10.0) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing accepts on port {port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--timeout-ms", type=int, default=250)
    ap.add_argument("--fanout-bin", default=str(REPO / "target" / "release" / "fanout"))
    args = ap.parse_args()
    if not Path(args.fanout_bin).exists():
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sim_port, port = free_port(), free_port()
            ca = Path(tmp) / "ca.pem"
            procs.append(subprocess.Popen(
                [args.fanout_bin, "simulator", "--listen", f"127.0.0.1:{sim_port}", "--failure-rate", "1",
                 "--failures", "hang", "--write-ca", str(ca)], stdout=subprocess.DEVNULL))
            wait_accepting(sim_port)
            procs.append(subprocess.Popen(
                [args.fanout_bin, "--listen", f"127.0.0.1:{port}",
                 "--upstream", f"https://localhost:{sim_port}/api/work", "--upstream-ca", str(ca)],
                stdout=subprocess.DEVNULL))
            wait_accepting(port)
            for endpoint in ENDPOINTS:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                times, statuses = [], {}
                for _ in range(args.calls):
                    start = time.perf_counter()
                    conn.request("GET", f"{endpoint}?timeout={args.timeout_ms}")
                    response = response_read = conn.getresponse()
                    response_read.read()
                    times.append((time.perf_counter() - start) * 1000)
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                conn.close()
                times.sort()
                print(json.dumps({
                    "endpoint": endpoint, "timeout_ms": args.timeout_ms, "calls": args.calls,
                    "statuses": statuses,
                    "ms": {"min": round(times[0], 1), "median": round(statistics.median(times), 1),
                           "p90": round(times[int(len(times) * 0.9) - 1], 1), "max": round(times[-1], 1)},
                }), flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
