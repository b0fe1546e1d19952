#!/usr/bin/env python3
"""fanout's benchmark: fanout and the conventional axum + reqwest peer, side by side.

    python3 bench/run.py [--quick] [--scenario NAME ...] [--only fanout|peer] [--client oha|wrk ...]
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

Python 3.11 standard library only (matplotlib, optional, for --plot alone). Every process it starts runs in its own session (so a Ctrl-C
in the terminal reaches only this script), dies with this script (PR_SET_PDEATHSIG), and is
stopped by its pid in a `finally`, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fanoutbench.common import BENCH_DIR, REPO, BenchError, log
from fanoutbench.loadgen import (CLIENTS, DEFAULT_CLIENT, PERCENTILES, Measured, client_argv,
                                 client_env, find_client, ms, read_measured)
from fanoutbench.measure import Settings, run_one
from fanoutbench.processes import Processes, free_port, wait_accepting, wait_finished
from fanoutbench.scenarios import SCENARIO_GROUPS, SCENARIO_NAMES, SCENARIOS, SMART_TARGETS, Scenario
from fanoutbench.servers import FANOUT_BIN, IMPLEMENTATIONS, PEER_BIN, build

# ------------------------------------------------------------------------------------------------
# Comparison and summary
# ------------------------------------------------------------------------------------------------

def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(scenario: str, client: str, fanout: dict, peer: dict) -> dict:
    return {
        "scenario": scenario,
        "client": client,
        "comparison": "fanout / peer",
        "rps_ratio": ratio(fanout["rps"], peer["rps"]),
        "cpu_per_call_ratio": ratio(fanout["cpu_s_per_1000_calls"], peer["cpu_s_per_1000_calls"]),
        "p99_ratio": ratio(fanout["latency_ms"]["p99"], peer["latency_ms"]["p99"]),
        "connections_per_1000_ratio": ratio(fanout["upstream"]["connections_per_1000_calls"],
                                            peer["upstream"]["connections_per_1000_calls"]),
    }


def smart_comparison(scenario: str, client: str, fixed: dict, auto: dict) -> dict:
    """`auto` against `fixed` in one run of a `smart` scenario, and whether the targets are met."""
    def figures(r: dict) -> dict:
        return {**{p: r["latency_ms"][p] for p in ("p50", "p90", "p99")},
                "requests_per_call": r["upstream"]["requests_per_call"],
                **{f"hedges_{k}": v for k, v in r.get("server", {}).get("hedges", {}).items()},
                "hedge_delay_ms_after": r.get("server", {}).get("hedge_delay_ms_after")}
    target = SMART_TARGETS[scenario]
    a, f = figures(auto), figures(fixed)
    p99_bound = target.get("p99_ms") or round(f["p99"] * target["p99_vs_fixed"], 1)
    met = (a["p99"] <= p99_bound and a["requests_per_call"] is not None
           and a["requests_per_call"] <= target["requests_per_call"])
    return {"scenario": scenario, "client": client, "comparison": "auto against fixed",
            "fixed": f, "auto": a,
            "target": {"p99_ms_at_most": p99_bound,
                       "requests_per_call_at_most": target["requests_per_call"]},
            "met": met}


def smart_lines(comparisons: list[dict]) -> list[str]:
    """One line per variant (per-request latency from oha, upstream requests per call in the window,
    hedges per call from fanout's /metrics), and the verdict."""
    lines = ["", "smart: /api/smart, fixed 300 ms against auto (p50/p90/p99 ms, upstream requests per "
                 "call, hedges fired/won/refused, delay after)"]
    for c in comparisons:
        for variant in ("fixed", "auto"):
            v = c[variant]
            lines.append(f"  {c['scenario']:<11} {variant:<5} p50 {v['p50']:>6.1f}  p90 {v['p90']:>6.1f}"
                         f"  p99 {v['p99']:>6.1f}  up r/c {fmt(v['requests_per_call'], 3)}  hedges "
                         f"{v.get('hedges_fired', '-')}/{v.get('hedges_won', '-')}/"
                         f"{v.get('hedges_refused', '-')}  delay {fmt(v['hedge_delay_ms_after'], 1)} ms")
        t = c["target"]
        lines.append(f"  {c['scenario']:<11} target auto p99 <= {t['p99_ms_at_most']:g} ms, up r/c <= "
                     f"{t['requests_per_call_at_most']:g}: {'met' if c['met'] else 'MISSED'}")
    return lines


def summary_table(results: list[dict], comparisons: list[dict]) -> str:
    head = (f"{'scenario':<10} {'impl':<7} {'client':<6} {'conns':>5} {'req/s':>8} {'p50ms':>7} "
            f"{'p99ms':>7} "
            f"{'maxms':>7} {'non2xx':>7} {'sockerr':>7} {'cpu/1k':>7} {'rssMiB':>7} "
            f"{'fds b/d/a':>17} {'up c/1k':>8} {'up r/c':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['scenario']:<10} {r['implementation']:<7} {r['client']:<6} ERROR: "
                         f"{r['error'].splitlines()[0][:100]}")
            continue
        lat, fds, up = r["latency_ms"], r["open_fds"], r["upstream"]
        errs = sum(n for kind, n in r["client_errors"].items() if kind != "cut_off")
        fd_text = f"{fds['before']}/{fds['during']}/{fds['after']}"
        client = r["client"] + ("*" if r["latency_corrected"] else "")
        lines.append(
            f"{r['scenario']:<10} {r.get('variant', r['implementation']):<7} {client:<6} "
            f"{r['connections']:>5} "
            f"{r['rps']:>8.1f} {lat['p50']:>7.1f} {lat['p99']:>7.1f} {lat['max']:>7.1f} "
            f"{r['non_2xx']:>7} {errs:>7} {fmt(r['cpu_s_per_1000_calls'], 3):>7} "
            f"{r['rss_mib']['peak']:>7.1f} {fd_text:>17} "
            f"{fmt(up['connections_per_1000_calls'], 1):>8} {fmt(up['requests_per_call'], 2):>6}")
        lines += deadline_lines(r, "")
        if "as_wrk" in r:
            lines += deadline_lines(r["as_wrk"], " as wrk would count them (corrected)")
        if "server" in r:
            lines += server_lines(r)
        if "rss_mib_series" in r:
            series = r["rss_mib_series"]
            lines.append(f"{'':<25} rss MiB every 1 s: {' '.join(f'{v:g}' for v in series)}"
                         + (f" (min {min(series):g}, max {max(series):g}, after "
                            f"{r['rss_mib']['after']:g})" if series else ""))
    if any(r.get("latency_corrected") for r in results):
        lines += ["", "* latency from wrk's histogram, corrected for coordinated omission: not each "
                      "response's own (bench/README.md)"]
    if comparisons:
        lines += ["", "fanout / peer:"]
        for c in comparisons:
            lines.append(f"  {c['scenario']:<10} {c['client']:<4} rps x{fmt(c['rps_ratio'], 2)}  "
                         f"cpu/call x{fmt(c['cpu_per_call_ratio'], 2)}  "
                         f"p99 x{fmt(c['p99_ratio'], 2)}  "
                         f"upstream conns/1000 x{fmt(c['connections_per_1000_ratio'], 2)}")
    return "\n".join(lines)


def deadline_lines(figures: dict, how: str) -> list[str]:
    """The client's late shares (overshoot) and shed answers (overload), when the run has them."""
    lines = []
    if "overshoot_ms" in figures:
        o, late = figures["overshoot_ms"], figures["late_share"]
        lines.append(f"{'':<25} overshoot ms p50 {o['p50']} p90 {o['p90']} p99 {o['p99']} "
                     f"max {o['max']}; late >5ms {pct(late['over_5ms'])}, "
                     f">25ms {pct(late['over_25ms'])}{how}")
    if figures.get("client_shed", {}).get("calls"):
        c = figures["client_shed"]
        lines.append(f"{'':<25} client: shed 503 n={c['calls']} <=5ms {pct(c['within_5ms'])}, "
                     f"<=25ms {pct(c['within_25ms'])}; answers >25ms past the deadline "
                     f"{pct(c['later_than_deadline_25ms'])}{how}")
    return lines


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(share) -> str:
    return "-" if share is None else f"{share:.2%}"


def bound(value) -> str:
    return "-" if value is None else f"<={value * 1000:g}ms" if isinstance(value, float) else value


def server_lines(r: dict) -> list[str]:
    """fanout's own figures (from /metrics) under its row, against the scenario's target."""
    pad = " " * 25
    srv = r["server"]
    o = srv["overshoot"]
    lines = [f"{pad} server: overshoot n={o['calls']} in time {pct(o['in_time'])}, <=5ms "
             f"{pct(o['within_5ms'])}, <=25ms {pct(o['within_25ms'])}, max bucket "
             f"{bound(o['max_bucket_s'])}; rss after {srv['rss_mib_after']:g} MiB"]
    if r["scenario"] == "overshoot" and o["calls"]:
        met = o["within_5ms"] >= 0.99 and o["within_25ms"] == 1.0
        lines.append(f"{pad} target >=99% <=5ms late, none >25ms: {'met' if met else 'MISSED'}")
    shed = srv["shed"]
    if shed["calls"] or shed["shed_total"]:
        lines.append(f"{pad} server: shed 503 n={shed['calls']} (shed_total {shed['shed_total']}), "
                     f"<=5ms {pct(shed['within_5ms'])}, max bucket {bound(shed['p_max_bucket_s'])}")
    accepted = srv.get("overshoot_accepted")
    if accepted:
        lines.append(f"{pad} server: accepted n={accepted['calls']} in time "
                     f"{pct(accepted['in_time'])}, <=5ms {pct(accepted['within_5ms'])}, <=25ms "
                     f"{pct(accepted['within_25ms'])}, max bucket {bound(accepted['max_bucket_s'])}")
    if r["scenario"] == "overload" and shed["calls"]:
        met = shed["within_5ms"] == 1.0
        lines.append(f"{pad} target shed answers <=5ms: {'met' if met else 'MISSED'}; deadline "
                     f"and flat memory: see the accepted and rss lines")
    return lines


# ------------------------------------------------------------------------------------------------
# --self-check: each load generator against a server whose latency distribution is known
# ------------------------------------------------------------------------------------------------

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


# ------------------------------------------------------------------------------------------------
# --plot: latency by percentile, one chart per scenario (matplotlib, optional)
# ------------------------------------------------------------------------------------------------

MATPLOTLIB_MISSING = ("bench: --plot needs matplotlib, which is not installed; install it with\n"
                      "    pip install -r bench/requirements.txt")
# Colour and marker by implementation, line style by load generator.
STYLES = {"fanout": ("#1f5fa8", "o"), "peer": ("#c8461d", "s")}
LINESTYLES = {"oha": "-", "wrk": ":"}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401  (optional: only --plot needs it)
    except ImportError:
        raise SystemExit(MATPLOTLIB_MISSING) from None


def nines(p: float) -> float:
    """x on a latency chart: log10(1/(1-p)), so 90%, 99%, 99.9% are evenly spaced."""
    return math.log10(100 / (100 - p))


def plot_all(results: list[dict], outdir: Path) -> bool:
    """One chart per scenario in `results` (runs with an error left out): DIR/SCENARIO.png."""
    by_scenario: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r and r.get("latency_curve_ms"):
            by_scenario.setdefault(r["scenario"], []).append(r)
    if not by_scenario:
        log("--plot: no run with latencies to draw")
        return False
    outdir.mkdir(parents=True, exist_ok=True)
    for name, runs in by_scenario.items():
        path = outdir / f"{name}.png"
        plot_scenario(runs, path)
        log(f"--plot: wrote {path}")
    return True


def plot_scenario(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = runs[0]
    scenario = next((s for s in SCENARIOS if s.name == first["scenario"]), None)
    fig, ax = plt.subplots(figsize=(11, 5.6), dpi=110)
    for r in sorted(runs, key=lambda r: (r["implementation"], r["client"])):
        colour, marker = STYLES.get(r["implementation"], ("#333333", "^"))
        xs, ys = zip(*((nines(p), v) for p, v in r["latency_curve_ms"]))
        marked = [i for i, (p, _v) in enumerate(r["latency_curve_ms"]) if p in PERCENTILES]
        how = "corrected histogram" if r["latency_corrected"] else "every response"
        ax.plot(xs, ys, linestyle=LINESTYLES.get(r["client"], "--"), marker=marker,
                markevery=marked, linewidth=2, color=colour,
                label=f"{r['implementation']} ({r['client']}: {how})")
    if scenario and scenario.deadline_line:
        ax.axhline(scenario.timeout_ms, color="#555555", linestyle="--", linewidth=1,
                   label=f"deadline {scenario.timeout_ms} ms")
    ax.set_xticks([nines(p) for p in PERCENTILES], [f"{p:g}%" for p in PERCENTILES])
    ax.set_xlim(nines(PERCENTILES[0]) - 0.1, nines(PERCENTILES[-1]) + 0.1)
    top = max(max(v for _p, v in r["latency_curve_ms"]) for r in runs)
    if scenario and scenario.deadline_line:
        top = max(top, scenario.timeout_ms)
    ax.set_ylim(0, top * 1.1)  # room above the highest line
    ax.set_xlabel("percentile (log scale of 1/(1-p))")
    ax.set_ylabel("latency at the client (ms)")
    ax.grid(True, color="#dddddd")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside, never on a line
    upstream = f"upstream {first['upstream_latency_ms']} ms"
    if first["upstream_failures"] != "none":
        share, kind = first["upstream_failures"].split()
        upstream += f", {float(share):.0%} {kind}"
    ax.set_title(f"{first['scenario']}: {first['connections']:,} connections, {first['endpoint']}, "
                 f"{upstream}\n{first.get('cores', '?')} cores, "
                 f"{first.get('date', '?')}, commit {first.get('commit', '?')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark fanout against the axum + reqwest peer (see bench/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs and fewer connections: a smoke test under 2 minutes")
    parser.add_argument("--scenario", action="extend", nargs="+",
                        choices=SCENARIO_NAMES + list(SCENARIO_GROUPS), metavar="NAME",
                        help=f"scenarios to run, in this order (default all: "
                             f"{' '.join(SCENARIO_NAMES)}; `smart` is smart-tail and smart-real)")
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


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, through every `finally`. SIGINT is set too:
    # a shell starts background jobs with it ignored, and then Python would not raise on it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    if args.plot:
        require_matplotlib()
    if args.results:
        results = [r for r in read_jsonl(args.results) if "implementation" in r]
        return 0 if plot_all(results, args.plot) else 1

    impls = [args.only] if args.only else list(IMPLEMENTATIONS)
    names = [one for name in (args.scenario or SCENARIO_NAMES)
             for one in SCENARIO_GROUPS.get(name, (name,))]
    scenarios = [s for name in names for s in SCENARIOS if s.name == name]
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
    for binary in [settings.fanout_bin] + ([settings.peer_bin] if "peer" in impls else []):
        if not binary.is_file():
            raise SystemExit(f"bench: {binary} is missing (build it, or drop --no-build)")

    stamp = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
             "cores": os.cpu_count()}
    results, comparisons, smart, failed = [], [], [], 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        for index, scenario in enumerate(scenarios):
            by_run = {}
            for impl, client, variant in runs_of(scenario, index, impls, list(clients)):
                run_settings = settings
                if variant:
                    run_settings = dataclasses.replace(
                        settings, fanout_args=settings.fanout_args + dict(scenario.variants)[variant])
                try:
                    result = {**run_one(scenario, impl, client, run_settings, Path(tmp)), **stamp}
                except BenchError as e:
                    failed += 1
                    result = {"scenario": scenario.name, "implementation": impl, "client": client,
                              "endpoint": scenario.endpoint, "error": str(e)}
                    log(f"{scenario.name}/{impl}/{client}: FAILED: {e}")
                if variant:
                    result["variant"] = variant
                results.append(result)
                by_run[impl if variant is None else variant, client] = result
                print(json.dumps(result), flush=True)
            for client in clients:
                if scenario.variants:
                    fixed, auto = by_run.get(("fixed", client)), by_run.get(("auto", client))
                    if fixed and auto and "error" not in fixed and "error" not in auto:
                        comparison = smart_comparison(scenario.name, client, fixed, auto)
                        smart.append(comparison)
                        print(json.dumps(comparison), flush=True)
                    continue
                fanout, peer = by_run.get(("fanout", client)), by_run.get(("peer", client))
                if fanout and peer and "error" not in fanout and "error" not in peer:
                    comparison = ratios(scenario.name, client, fanout, peer)
                    comparisons.append(comparison)
                    print(json.dumps(comparison), flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    print(summary_table(results, comparisons), file=sys.stderr)
    if smart:
        print("\n".join(smart_lines(smart)), file=sys.stderr)
    if args.plot and not plot_all(results, args.plot):
        failed += 1
    return 1 if failed else 0


def runs_of(scenario: Scenario, index: int, impls: list[str],
            clients: list[str]) -> list[tuple[str, str, str | None]]:
    """(implementation, client, variant) of each run of a scenario, in order: fanout alone once per
    variant, the order changing from one scenario to the next; otherwise as run_order says."""
    if not scenario.variants:
        return [(impl, client, None) for impl, client in run_order(index, impls, clients)]
    names = [name for name, _args in scenario.variants]
    return [("fanout", client, name) for name, client in run_order(index, names, clients)]


def run_order(index: int, impls: list[str], clients: list[str]) -> list[tuple[str, str]]:
    """Every (implementation, client) of a scenario, alternated: which implementation goes first
    changes from one scenario to the next, and with two clients each implementation's runs go
    ABBA (oha, wrk, then wrk, oha), so neither side always runs on a machine still warm, or still
    busy, from the other."""
    order = [(impl, client) for i, impl in enumerate(impls)
             for client in (clients if i % 2 == 0 else clients[::-1])]
    return order if index % 2 == 0 else order[::-1]


def git_commit() -> str | None:
    """The repository's commit, with `-dirty` when the work tree has changes: for the charts."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout
    commit = git("rev-parse", "--short", "HEAD").strip()
    return (commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip()
                      else "")) or None


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        sys.exit(130)
