#!/usr/bin/env python3
"""Does a mechanism earn its place? Runs bench/run.py on fanout alone, with and without it, alternated.

For each mechanism, on the scenarios it was built for, each round runs fanout once with the mechanism
and once without, the order swapped from one round to the next so that neither side always runs on a
machine still busy from the other. Every run's JSON line goes to stdout (with `"variant"` and `"round"`
added); a table for people goes to stderr: each figure per round, with and without, and the median.

"Without" is a flag where fanout has one, or an environment variable that only a measurement build
reads: `bench/ablation.patch` adds those, and `--fanout-bin` names that build:

    git worktree add --detach ../ablate HEAD && git -C ../ablate apply "$PWD/bench/ablation.patch"
    cargo build --release --manifest-path ../ablate/Cargo.toml
    python3 bench/ablate.py --fanout-bin ../ablate/target/release/fanout > ablation.jsonl

The same binary serves both sides of every pair: with none of the variables set it is fanout as built
from the commit the patch was applied to.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (how to turn it off: extra fanout arguments, extra environment), the scenarios it is for.
MECHANISMS = {
    "upstream-runtime": (([], {"FANOUT_ABLATE_UPSTREAM_RUNTIME": "1"}), ["capacity", "overshoot", "overload"]),
    "shed-runtime": (([], {"FANOUT_ABLATE_SHED_RUNTIME": "1"}), ["overload"]),
    "lag-limit": ((["--fanout-arg=--overload-lag-ms=0"], {}), ["overload"]),
    "deadline-lead": ((["--fanout-arg=--max-deadline-lead-ms=1"], {}), ["overshoot", "overload"]),
    "log-thread": (([], {"FANOUT_ABLATE_LOG_THREAD": "1"}), ["cpu", "overload"]),
}

# The figures compared, per scenario: (label, path into a run.py JSON line).
FIGURES = {
    "cpu": [("calls/s", "rps"), ("cpu s/1k calls", "cpu_s_per_1000_calls")],
    "capacity": [("calls/s", "rps"), ("cpu s/1k calls", "cpu_s_per_1000_calls"), ("client p99 ms", "latency_ms.p99"),
                 ("server <=5ms late", "server.overshoot.within_5ms")],
    "overshoot": [("calls/s", "rps"), ("cpu s/1k calls", "cpu_s_per_1000_calls"),
                  ("server in time", "server.overshoot.in_time"),
                  ("server <=5ms late", "server.overshoot.within_5ms"),
                  ("server <=25ms late", "server.overshoot.within_25ms"),
                  ("client >5ms late", "late_share.over_5ms"), ("client >25ms late", "late_share.over_25ms")],
    "overload": [("calls/s", "rps"), ("200s", "status_counts.200"),
                 ("cpu s/1k calls", "cpu_s_per_1000_calls"),
                 ("admitted in time", "server.overshoot_accepted.in_time"),
                 ("admitted <=25ms late", "server.overshoot_accepted.within_25ms"),
                 ("shed <=5ms", "server.shed.within_5ms"),
                 ("client: shed <=5ms", "client_shed.within_5ms"),
                 ("client: >25ms past deadline", "client_shed.later_than_deadline_25ms"),
                 ("rss after MiB", "rss_mib.after")],
}


def figure(line: dict, path: str):
    value = line
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def run(args, scenarios: list[str], extra_args: list[str], extra_env: dict) -> list[dict]:
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--only", "fanout", "--no-build",
            "--fanout-bin", str(args.fanout_bin.resolve()), "--scenario", *scenarios, *extra_args]
    env = {**os.environ, **extra_env}
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, timeout=3600)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def show(value, share: bool) -> str:
    """A share as a percentage; anything else as a number."""
    if value is None:
        return "-"
    if share:
        return f"{value * 100:.2f}%"
    return f"{value:,.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fanout-bin", type=Path,
                        help="a build with bench/ablation.patch applied")
    parser.add_argument("--from", dest="from_file", type=Path,
                        help="summarise the JSON lines of an earlier run instead of running")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mechanism", action="extend", nargs="+", choices=list(MECHANISMS),
                        help="the mechanisms to measure (default: all)")
    args = parser.parse_args()
    if not args.fanout_bin and not args.from_file:
        parser.error("give --fanout-bin (to run) or --from (to summarise)")
    earlier = [json.loads(line) for line in args.from_file.read_text().splitlines()] if args.from_file else []

    table = []
    for name in args.mechanism or list(MECHANISMS):
        (off_args, off_env), scenarios = MECHANISMS[name]
        results = {("with", s): [] for s in scenarios} | {("without", s): [] for s in scenarios}
        for line in (line for line in earlier if line.get("mechanism") == name):
            results[(line["variant"], line["scenario"])].append(line)
        for round_ in range(1, 0 if earlier else args.rounds + 1):
            order = ["with", "without"] if round_ % 2 else ["without", "with"]
            for variant in order:
                print(f"ablate: {name} round {round_} {variant}", file=sys.stderr, flush=True)
                lines = run(args, scenarios, off_args if variant == "without" else [],
                            off_env if variant == "without" else {})
                for line in lines:
                    line.update(mechanism=name, variant=variant, round=round_)
                    print(json.dumps(line), flush=True)
                    results[(variant, line["scenario"])].append(line)
        for scenario in scenarios:
            for label, path in FIGURES[scenario]:
                row = [name, scenario, label]
                # Shares are the figures whose labels say where answers fall: late, past, in time, within.
                share = any(word in label for word in ("late", "past", "in time", "<="))
                for variant in ("with", "without"):
                    values = [figure(line, path) for line in results[(variant, scenario)]]
                    known = [v for v in values if v is not None]
                    median = statistics.median(known) if known else None
                    shown = " ".join(show(v, share) for v in values)
                    row.append(f"{shown} (median {show(median, share)})")
                table.append(row)

    print("\nmechanism | scenario | figure | with | without", file=sys.stderr)
    for row in table:
        print(" | ".join(row), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
