#!/usr/bin/env python3
"""A restart under load with nothing lost: two fanout processes behind HAProxy, each restarted in turn.

    python3 bench/restart.py [--rounds 5] [--no-build] [--fanout-bin PATH] [--fanout-arg=ARG ...]

Starts a simulated upstream (`fanout simulator`, 100-600 ms, 10% of requests failing in every way
it knows), two fanout processes in front of it, and HAProxy in front of them with
deploy/haproxy.cfg (its ports changed to free ones, and a stats socket added so this script can see
when HAProxy has put a server back). oha then drives `/api/within-timeout?timeout=1000` through
HAProxy (100 keep-alive connections, closed loop) while, every 12 s, one fanout process is sent
SIGTERM, waited for, and a new one started on the same ports; each round restarts both. Each runs
with `--drain-delay-ms 3000` (README.md, "Stopping without losing calls");
`--fanout-arg=--drain-delay-ms=0` shows what happens without it.

Every call should succeed: `/api/within-timeout` answers 200 whatever the upstream does, so a
failed call (a connection error, a reset, any status but 200) is one the restart lost. The verdict
counts them from oha's report and exits 1 if there is any, if an old process did not exit 0, or
if a new one was not back in HAProxy within 20 s.
HAProxy's log says what each failure it saw was (its status and termination state, e.g. `SC` a
refused connect, `SH` a connection closed before the response head) and how many connects it
retried; a call it dropped without a line (a client connection closed under a request) only
oha's report shows.

Loopback only; every process runs in its own session and is stopped by pid when the script ends,
whatever happens (fanoutbench's `Processes`); every wait is bounded. Needs oha (`cargo install oha --locked`)
and haproxy (`apt-get install haproxy`).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from fanoutbench.common import REPO, BenchError
from fanoutbench.processes import Processes, free_port, wait_accepting
from fanoutbench.servers import FANOUT_BIN, build
from procs import find_tool, start_fanout, start_simulator

HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
# The lines of deploy/haproxy.cfg whose ports are replaced by free ones: the frontend's, and each
# server's API and admin (health check) ports.
CFG_FRONTEND = "bind 127.0.0.1:8000"
CFG_SERVERS = {"fanout1": "server fanout1 127.0.0.1:8080 port 8081",
               "fanout2": "server fanout2 127.0.0.1:8082 port 8083"}
TARGET = "/api/within-timeout?timeout=1000"
CONNECTIONS = 100
SIMULATOR_FLAGS = ("--latency-ms", "100-600", "--failure-rate", "0.1")
# On SIGTERM, keep the listener open (and idle connections too) past the time HAProxy takes to see
# /readyz fail twice, 1 s apart (deploy/haproxy.cfg): README.md, "Operations", "Behind a load balancer".
FANOUT_FLAGS = ("--drain-delay-ms", "3000")
LEAD_S, TAIL_S = 3, 3  # load before the first restart and after the last
SLOT_S = 12  # one restart: SIGTERM, drain, exit, start, back in HAProxy; then load until the next
EXIT_LIMIT_S = 30  # a drained process exits well within this (its calls end by their 1 s deadline)
UP_LIMIT_S = 20
# One HAProxy `option httplog` line: ... backend/server timers status bytes - - term ac/fc/bc/sc/rc
LOG_LINE = re.compile(r" \S+/(?P<server>\S+) \S+ (?P<status>-?\d+) \d+ \S+ \S+ (?P<term>\S{4}) "
                      r"\d+/\d+/\d+/\d+/(?P<retries>\+?\d+) ")


def log(message: str) -> None:
    print(f"[restart {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def haproxy_config(tmp: Path, frontend: int, servers: dict[str, tuple[int, int]]) -> Path:
    """deploy/haproxy.cfg with free ports, and a stats socket for `server_status`."""
    text = HAPROXY_CFG.read_text()
    swaps = [(CFG_FRONTEND, f"bind 127.0.0.1:{frontend}")]
    for name, line in CFG_SERVERS.items():
        api, admin = servers[name]
        swaps.append((line, f"server {name} 127.0.0.1:{api} port {admin}"))
    swaps.append(("\nglobal\n", f"\nglobal\n    stats socket {tmp}/haproxy.sock\n"))
    for old, new in swaps:
        if text.count(old) != 1:
            raise SystemExit(f"deploy/haproxy.cfg: expected `{old.strip()}` once")
        text = text.replace(old, new)
    path = tmp / "haproxy.cfg"
    path.write_text(text)
    return path


def server_status(tmp: Path, server: str) -> str:
    """The server's state as HAProxy's checks see it: UP, DOWN, `UP 1/2` (going down), ..."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(tmp / "haproxy.sock"))
        s.sendall(b"show stat\n")
        csv = b""
        while chunk := s.recv(65536):
            csv += chunk
    lines = csv.decode().splitlines()
    columns = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(columns, line.split(",")))
        if row.get("pxname") == "fanout" and row.get("svname") == server:
            return row["status"]
    return "missing"


def wait_up(tmp: Path, server: str, limit_s: float) -> float | None:
    """Seconds until HAProxy has `server` UP again, or None past `limit_s`."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if server_status(tmp, server) == "UP":
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def haproxy_figures(log_path: Path) -> dict:
    """What HAProxy's log says about the calls (its lines for GET requests): answers by status,
    the unusual ones by kind (status, termination state, server) with a few of their lines, and
    the connects it retried."""
    statuses, unusual, retried, redispatched, examples = Counter(), Counter(), 0, 0, []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"GET ' not in line or not (m := LOG_LINE.search(line)):
            continue
        statuses[m["status"]] += 1
        retried += int(m["retries"].lstrip("+"))
        redispatched += m["retries"].startswith("+")
        if m["status"] != "200" or m["term"] != "----":
            unusual[f"{m['status']} {m['term']} {m['server']}"] += 1
            examples = (examples + [line])[:10]
    return {"statuses": dict(statuses), "unusual": dict(unusual), "unusual_lines": examples,
            "connects_retried": retried, "requests_redispatched": redispatched}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="each round restarts both processes")
    parser.add_argument("--no-build", action="store_true", help="use the binary as it is")
    parser.add_argument("--fanout-bin", type=Path, default=FANOUT_BIN)
    parser.add_argument("--fanout-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for each fanout process (repeatable)")
    args = parser.parse_args()
    oha = find_tool("oha", "cargo install oha --locked")
    haproxy = find_tool("haproxy", "apt-get install haproxy")
    build(skip_fanout=args.no_build or args.fanout_bin != FANOUT_BIN, need_peer=False)

    with tempfile.TemporaryDirectory(prefix="fanout-restart-") as tmpdir, \
            Processes(Path(tmpdir)) as procs:
        tmp = Path(tmpdir)
        upstream = start_simulator(procs, args.fanout_bin, *SIMULATOR_FLAGS)
        ports = {name: (free_port(), free_port()) for name in CFG_SERVERS}

        def start(name: str, generation: int):
            return start_fanout(procs, f"{name}-{generation}", args.fanout_bin, upstream,
                                *ports[name], *FANOUT_FLAGS, *args.fanout_arg)

        running = {name: start(name, 0) for name in CFG_SERVERS}
        frontend = free_port()
        balancer = procs.start("haproxy", [haproxy, "-db", "-f",
                                           str(haproxy_config(tmp, frontend, ports))])
        wait_accepting(procs, balancer, "haproxy", frontend)
        for name in CFG_SERVERS:
            if wait_up(tmp, name, UP_LIMIT_S) is None:
                raise SystemExit(f"HAProxy did not see {name} UP within {UP_LIMIT_S} s")

        restarts = [name for _ in range(args.rounds) for name in CFG_SERVERS]
        load_s = LEAD_S + len(restarts) * SLOT_S + TAIL_S
        log(f"oha: {CONNECTIONS} connections on {TARGET} through HAProxy for {load_s} s; "
            f"{len(restarts)} restarts, one every {SLOT_S} s")
        t0 = time.monotonic()
        caller = procs.start("oha", [oha, "-c", str(CONNECTIONS), "-z", f"{load_s}s", "--no-tui",
                                     "--wait-ongoing-requests-after-deadline", "--output-format",
                                     "json", "--output", str(tmp / "oha.json"),
                                     f"http://127.0.0.1:{frontend}{TARGET}"])
        rounds = []
        for i, name in enumerate(restarts):
            time.sleep(max(0.0, t0 + LEAD_S + i * SLOT_S - time.monotonic()))
            began = time.monotonic()
            exit_code = procs.stop(running[name], grace_s=EXIT_LIMIT_S)
            exited = time.monotonic() - began
            running[name] = start(name, i // len(CFG_SERVERS) + 1)
            up = wait_up(tmp, name, UP_LIMIT_S)
            rounds.append({"restart": i + 1, "server": name, "exit_code": exit_code,
                           "exited_s": round(exited, 2), "up_again_s": up and round(up + exited, 2)})
            log(json.dumps(rounds[-1]))
        restarted_in_load = time.monotonic() - t0 < load_s
        procs.stop(caller, grace_s=load_s + 30, sig=None)  # oha ends by itself
        report = json.loads((tmp / "oha.json").read_text())
        procs.stop(balancer)
        balancer_view = haproxy_figures(tmp / "haproxy.log")

    statuses = report.get("statusCodeDistribution") or {}
    errors = report.get("errorDistribution") or {}
    calls = sum(statuses.values()) + sum(errors.values())
    failed = sum(n for status, n in statuses.items() if status != "200") + sum(errors.values())
    bad_exits = [r for r in rounds if r["exit_code"] != 0]
    not_back = [r for r in rounds if r["up_again_s"] is None]
    result = {"calls": calls, "failed": failed, "statuses": statuses, "errors": errors,
              "haproxy": balancer_view, "rounds": rounds,
              "restarts_within_the_load": restarted_in_load}
    print(json.dumps(result), flush=True)
    log(f"calls {calls}, failed {failed}: statuses {statuses}, errors {errors}")
    log(f"HAProxy: answers {balancer_view['statuses']}, unusual ones (status, termination state, "
        f"server) {balancer_view['unusual']}, connects retried {balancer_view['connects_retried']}"
        f" ({balancer_view['requests_redispatched']} requests sent to the other server)")
    for line in balancer_view["unusual_lines"]:
        log(f"  {line}")
    ok = failed == 0 and not bad_exits and not not_back and restarted_in_load and calls > 0
    if bad_exits:
        log(f"old processes that did not exit 0 on SIGTERM: {bad_exits}")
    if not_back:
        log(f"new processes HAProxy did not see UP within {UP_LIMIT_S} s: {not_back}")
    if not restarted_in_load:
        log("the restarts outlasted the load: the last ones were not under load")
    print(f"restart: {'passed' if ok else 'FAILED'}: {len(rounds)} restarts, {calls} calls, "
          f"{failed} failed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"restart: {e}")
