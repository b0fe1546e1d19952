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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENDPOINTS = ("/api/all", "/api/first", "/api/within-timeout", "/api/smart")


def read_line_with(proc: subprocess.Popen, marker: str, seconds: float = 10.0) -> str:
    """The first line of `proc`'s stdout containing `marker` (both programs announce their address)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        line = proc.stdout.readline()
        if marker in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise SystemExit(f"no line with {marker!r} from {proc.args[:2]}")


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
            # Port 0 everywhere, and each program says which port it got: no races for free ports.
            ca = Path(tmp) / "ca.pem"
            sim = subprocess.Popen(
                [args.fanout_bin, "simulator", "--listen", "127.0.0.1:0", "--failure-rate", "1",
                 "--failures", "hang", "--write-ca", str(ca)], stdout=subprocess.PIPE, text=True)
            procs.append(sim)
            sim_url = read_line_with(sim, "serving").split()[-1]
            server = subprocess.Popen(
                [args.fanout_bin, "--listen", "127.0.0.1:0", "--admin-listen", "off", "--access-log", "off",
                 "--upstream", sim_url, "--upstream-ca", str(ca)], stdout=subprocess.PIPE, text=True)
            procs.append(server)
            start = json.loads(read_line_with(server, '"event":"start"'))
            port = int(start["listen"].rsplit(":", 1)[1])
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
