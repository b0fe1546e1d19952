"""What one run observed, and the JSON line made of it.

measure.py fills an `Observed`, step by step; `result_line` turns it into the line's figures, in the
order bench/README.md's "Output" table gives them. Nothing here starts a process or reads a clock:
the arithmetic of every figure can be read in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .loadgen import Measured
from .metrics import Sample, server_figures
from .plan import Plan
from .scenarios import LATE_MS, SHED_MS, Scenario


class WindowEdge(NamedTuple):
    """Readings at one end of the measurement window."""
    server_cpu_s: float
    stats: dict[str, int]  # the simulator's /stats
    client_cpu_s: float


@dataclass
class Readings:
    """The server, the simulator and the machine right before, or right after, the measured load."""
    server_cpu_s: float
    simulator_cpu_s: float
    steal_s: float
    metrics: list[Sample] | None  # fanout's /metrics; None for the peer, or with --admin-listen=off
    stats: dict[str, int]  # the simulator's /stats
    fds: int | None = None  # (before the load only) the server's open files
    rss_mib: float | None = None  # (before the load only) its VmRSS


@dataclass
class DuringLoad:
    """What was sampled while the load ran."""
    window: list[WindowEdge] = field(default_factory=list)  # its start, then its end
    fds_during: int | None = None  # open files at the sample nearest mid-run
    fds_max: int | None = None
    upstream_open_during: int | None = None  # the simulator's open connections then
    upstream_reset_s: float | None = None  # (reset_upstream) when the simulator was told to reset
    rss_series: list[float] = field(default_factory=list)  # VmRSS every second (rss_series)


@dataclass
class Settled:
    """The server and the simulator a few seconds after the load, once idle connections had a
    chance to close."""
    fds: int
    memory: dict[str, float]  # VmRSS and VmHWM
    stats: dict[str, int]


@dataclass
class Observed:
    check: dict  # the single check request before the load
    rss_before_warmup: float
    before: Readings
    during: DuringLoad
    after: Readings
    report: Measured  # what the load generator saw
    settled: Settled
    server_log: dict | None = None  # (server_log, fanout) its late answers, from its access log


def result_head(scenario: Scenario, impl: str, client: str, connections: int) -> dict:
    """What ran: the first fields of every line, also of one whose run failed."""
    return {
        "scenario": scenario.name,
        "implementation": impl,
        "client": client,
        "endpoint": scenario.endpoint,
        "connections": connections,
        "upstream_latency_ms": scenario.latency_ms,
        "upstream_failures": (f"{scenario.failure_rate:g} {scenario.failures}"
                              if scenario.failure_rate else "none"),
    }


def result_line(scenario: Scenario, plan: Plan, observed: Observed) -> dict:
    """The figures of a measured run, after `result_head`'s fields."""
    report = observed.report
    line = {"check": observed.check, **load_figures(plan, report),
            **resource_figures(observed)}
    if scenario.rss_series:
        line["rss_mib_series"] = observed.during.rss_series
    line.update(deadline_figures(scenario, report))
    if report.as_wrk:
        line["as_wrk"] = {"latency_ms": report.as_wrk.latency_ms(),
                          **deadline_figures(scenario, report.as_wrk)}
    before, after = observed.before.metrics, observed.after.metrics
    if before is not None and after is not None:
        line["server"] = server_figures(before, after, scenario)
    if observed.during.upstream_reset_s is not None:
        line["upstream_reset_at_s"] = observed.during.upstream_reset_s
    if observed.server_log is not None:
        line["server_log"] = observed.server_log
    return line


def load_figures(plan: Plan, report: Measured) -> dict:
    """The load as the client saw it: how long, how many responses, their latency and statuses."""
    calls = report.requests
    seconds = report.duration_s
    statuses = dict(sorted(report.statuses.items()))
    return {
        "warmup_s": plan.warmup_s,
        "warmup_pause_s": round(plan.warmup_pause_s, 2),
        "duration_s": round(seconds, 2),
        "requests": calls,
        "rps": round(calls / seconds, 1) if seconds else None,
        "latency_corrected": report.corrected,
        "latency_calls": report.latency_calls,
        "latency_ms": report.latency_ms(),
        "latency_curve_ms": report.curve_ms(),
        "status_counts": statuses,
        "non_2xx": sum(n for status, n in statuses.items() if not 200 <= int(status) < 300),
        "client_errors": report.errors,
        "window": {"from_s": round(plan.window_from_s, 2),
                   "to_s": round(plan.duration_s - plan.window_tail_s, 2),
                   "calls": report.window_calls},
    }


def resource_figures(observed: Observed) -> dict:
    """What the load cost: the server's CPU (per call in the window, and over the load), memory and
    open files; the upstream connections and requests; the simulator's CPU and the machine's steal."""
    before, during, after, settled = (observed.before, observed.during, observed.after,
                                      observed.settled)
    start, end = during.window
    calls = observed.report.window_calls
    w_opened = end.stats["connections_accepted"] - start.stats["connections_accepted"]
    w_requests = end.stats["requests"] - start.stats["requests"]
    return {
        "cpu_s_per_1000_calls": per_call(end.server_cpu_s - start.server_cpu_s, calls, 1000, 4),
        "cpu_s": round(after.server_cpu_s - before.server_cpu_s, 2),
        "client_cpu_s_per_1000_calls": per_call(end.client_cpu_s - start.client_cpu_s, calls,
                                                1000, 4),
        "rss_mib": {"before_warmup": observed.rss_before_warmup, "before": before.rss_mib,
                    "peak": settled.memory["VmHWM"], "after": settled.memory["VmRSS"]},
        "open_fds": {"before": before.fds, "during": during.fds_during, "max": during.fds_max,
                     "after": settled.fds},
        "upstream": {
            "connections_per_1000_calls": per_call(w_opened, calls, 1000, 2),
            "requests_per_call": per_call(w_requests, calls, 1, 3),
            "connections_opened": (after.stats["connections_accepted"]
                                   - before.stats["connections_accepted"]),
            "requests": after.stats["requests"] - before.stats["requests"],
            "connections_open_during": during.upstream_open_during,
            "connections_open_after": settled.stats["connections_open"],
        },
        "simulator_cpu_s": round(after.simulator_cpu_s - before.simulator_cpu_s, 2),
        "steal_s": round(after.steal_s - before.steal_s, 2),
    }


def per_call(value: float, calls: int | None, scale: float, digits: int) -> float | None:
    """`value` per call in the window, times `scale`; None when no call completed in it."""
    return round(value / calls * scale, digits) if calls else None


def deadline_figures(scenario: Scenario, report: Measured) -> dict:
    """`client_shed` (overload) and `overshoot_ms` and `late_share` (overshoot) from the client's
    latencies: exact counts of responses with oha, shares of a corrected histogram with wrk."""
    at_most, timed = report.at_most, report.latency_calls

    def late_share(late_ms: int):
        """The share of responses later than the deadline + late_ms."""
        return (round((timed - at_most[(scenario.timeout_ms + late_ms) * 1000]) / timed, 5)
                if timed else None)
    figures = {}
    if scenario.client_shed:
        # No admitted call can be answered within 25 ms here (every upstream request takes 100 ms or
        # more, and none fails), so the answers that fast are shed ones: their share of the 503s.
        shed = report.latency_statuses.get("503", 0)
        figures["client_shed"] = {
            "calls": shed,
            **{f"within_{bound}ms": round(at_most[bound * 1000] / shed, 5) if shed else None
               for bound in SHED_MS},
            "later_than_deadline_25ms": late_share(25),
        }
    if scenario.overshoot:
        figures["overshoot_ms"] = {k: round(v - scenario.timeout_ms, 1)
                                   for k, v in report.latency_ms().items()}
        figures["late_share"] = {f"over_{late}ms": late_share(late) for late in LATE_MS}
    return figures
