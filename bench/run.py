#!/usr/bin/env python3
"""fanout's benchmark: fanout and the conventional axum + reqwest peer, side by side.

    python3 bench/run.py [--quick] [--scenario NAME ...] [--connections N] [--only fanout|peer]
                         [--client oha|wrk ...]
    python3 bench/run.py --self-check
    python3 bench/run.py --plot DIR [--from RESULTS.jsonl]

For each scenario and each implementation it starts a fresh simulated upstream
(`fanout simulator`, over TLS, on its own port) and a fresh server, checks that one request is
answered correctly, warms it up with a short load (discarded), drives it with oha, which records
every response, and prints one JSON line with what it saw (for fanout, also its own figures from
its /metrics). After both implementations of a scenario, one JSON line gives fanout's figures as
ratios to the peer's. A table for people goes to stderr. `--client wrk` measures with wrk instead,
whose latency histogram is corrected for coordinated omission (marked so). `--self-check` measures
servers with a known latency distribution and compares the counts with the truth; `--plot` draws
latency by percentile. See bench/README.md for what every field means.

This file reads the command line; the work is the fanoutbench package's, beside it (its
__init__ lists the modules).

Python 3.11 standard library only (matplotlib, optional, for --plot alone). Every process it starts runs in its own session (so a Ctrl-C
in the terminal reaches only this script), dies with this script (PR_SET_PDEATHSIG), and is
stopped by its pid in a `finally`, whatever happens.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fanoutbench.common import log
from fanoutbench.loadgen import CLIENTS, DEFAULT_CLIENT, find_client
from fanoutbench.measure import Settings
from fanoutbench.plot import plot_all, read_results, require_matplotlib
from fanoutbench.processes import cpu_split, unwind_on_signals
from fanoutbench.scenarios import SCENARIO_GROUPS, SCENARIO_NAMES, scenarios_named
from fanoutbench.selfcheck import self_check
from fanoutbench.servers import FANOUT_BIN, IMPLEMENTATIONS, PEER_BIN, build
from fanoutbench.suite import run_suite


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark fanout against the axum + reqwest peer (see bench/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs and fewer connections: a smoke test under 2 minutes")
    parser.add_argument("--scenario", action="extend", nargs="+",
                        choices=SCENARIO_NAMES + list(SCENARIO_GROUPS), metavar="NAME",
                        help=f"scenarios to run, in this order (default all: "
                             f"{' '.join(SCENARIO_NAMES)}; `smart` is smart-tail and smart-real)")
    parser.add_argument("--connections", type=positive, metavar="N",
                        help="load each scenario named with N connections instead of its own (with "
                             "--quick too), e.g. to find the load at which an implementation gives way")
    parser.add_argument("--only", choices=IMPLEMENTATIONS,
                        help="measure only one implementation (no ratio lines)")
    parser.add_argument("--fanout-bin", type=Path,
                        help="use this fanout binary (server and simulator) instead of building "
                             "target/release/fanout")
    parser.add_argument("--fanout-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for the fanout server, e.g. --fanout-arg=--upstream-linger-ms=0 "
                             "(repeatable)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the binaries already built instead of running cargo")
    parser.add_argument("--pin", action="store_true",
                        help="the server under test on a CPU of its own, the simulator and the load "
                             "generator on the others (at least 2 CPUs), so the testbed's share is out "
                             "of the server's figures")
    parser.add_argument("--client", action="extend", nargs="+", choices=CLIENTS,
                        help="measure with this load generator instead of each scenario's own "
                             "(oha: every response's latency; wrk: a corrected histogram); two "
                             "run both, alternated")
    parser.add_argument("--self-check", action="store_true",
                        help="measure servers with a known latency distribution with each load "
                             "generator and compare the counts with the truth; exit 1 if one is off")
    parser.add_argument("--plot", type=Path, metavar="DIR",
                        help="draw latency by percentile per scenario into DIR/SCENARIO.png "
                             "(needs matplotlib: pip install -r bench/requirements.txt)")
    parser.add_argument("--from", dest="results", type=Path, metavar="FILE",
                        help="with --plot: draw from the JSON lines of an earlier run instead of "
                             "running")
    args = parser.parse_args(argv)
    if args.results and not args.plot:
        parser.error("--from needs --plot")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    unwind_on_signals()

    if args.plot:
        require_matplotlib()
    if args.results:
        return 0 if plot_all(read_results(args.results), args.plot) else 1

    impls = [args.only] if args.only else list(IMPLEMENTATIONS)
    scenarios = scenarios_named(args.scenario or SCENARIO_NAMES)
    if args.connections:
        scenarios = [replace(s, connections=args.connections, quick_connections=args.connections)
                     for s in scenarios]
    clients = {c: find_client(c) for c in
               (args.client or (CLIENTS if args.self_check else [DEFAULT_CLIENT]))}
    if args.self_check:
        return self_check(clients)
    if not args.no_build:
        build(skip_fanout=args.fanout_bin is not None, need_peer="peer" in impls)
    settings = Settings(
        quick=args.quick,
        fanout_bin=(args.fanout_bin or FANOUT_BIN).resolve(),
        peer_bin=PEER_BIN,
        clients=clients,
        settle_s=2.0 if args.quick else 3.0,
        fanout_args=tuple(args.fanout_arg),
    )
    settings.server_cpus, settings.other_cpus = cpu_split(args.pin)
    for binary in [settings.fanout_bin] + ([settings.peer_bin] if "peer" in impls else []):
        if not binary.is_file():
            raise SystemExit(f"bench: {binary} is missing (build it, or drop --no-build)")
    return run_suite(scenarios, impls, settings, args.plot)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        sys.exit(130)
