"""The scenarios: what each one asks of the simulated upstream and of the load, and what it reports.

bench/README.md, "Scenarios", says what each is for. A leaf: plain data, imported by every layer above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Scenario:
    name: str
    purpose: str
    latency_ms: str  # the simulator's --latency-ms
    path: str  # endpoint, without the query
    timeout_ms: int  # the endpoint's ?timeout=
    connections: int
    quick_connections: int
    duration_s: int = 15
    failure_rate: float = 0.0
    failures: str = ""  # the simulator's --failures
    # What the single check request may answer: statuses, and the shape of a 200 body.
    ok_statuses: tuple[int, ...] = (200,)
    shape: str = "array"  # "array" (of {"time": N}) or "object" ({"time": N})
    # Report latency relative to the deadline (overshoot_ms, late shares).
    overshoot: bool = False
    # Sample the server's resident memory every second of the measured run (rss_mib_series).
    rss_series: bool = False
    # Report the shed answers' latency as the client saw it (client_shed). Only where no admitted
    # call can be answered within the largest of SHED_MS.
    client_shed: bool = False
    # --plot draws the deadline where answers can reach it.
    deadline_line: bool = True
    # fanout alone, once per (name, extra fanout arguments), alternated (the `smart` scenarios).
    variants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # No warm-up, and the client's figures over the whole load (`cold-start`): the first wave, with
    # every upstream connection still to be made, is the point.
    cold: bool = False
    # fanout opens this many upstream connections before /readyz says ready (--upstream-warm), and the
    # load waits for /readyz, as a load balancer does (`cold-start`).
    warm: int = 0
    # Halfway through the measured load the simulator resets every connection (`upstream-reset`).
    reset_upstream: bool = False
    # fanout's own late answers from its access log, each answer's `overshoot_ms` (`server_log`).
    server_log: bool = False
    # Callers who leave (`impatient`, run by impatient.py): the load's callers give up after this
    # many ms, beside (path with query, connections) patient ones.
    give_up_ms: int | None = None
    patient: tuple[str, int] = ("", 0)

    @property
    def endpoint(self) -> str:
        return f"{self.path}?timeout={self.timeout_ms}"


SCENARIOS = [
    Scenario(
        "cpu",
        "CPU per call and throughput with an instant upstream",
        latency_ms="0",
        path="/api/all",
        timeout_ms=1000,
        connections=64,
        quick_connections=16,
        deadline_line=False,
    ),
    Scenario(
        "capacity",
        "many concurrent callers with a slow upstream: throughput, deadline kept, connections",
        latency_ms="100-600",
        path="/api/within-timeout",
        timeout_ms=1000,
        connections=2000,
        quick_connections=300,
    ),
    Scenario(
        "overshoot",
        "how late answers are past a short deadline when 20% of upstream requests hang",
        latency_ms="100-600",
        failure_rate=0.2,
        failures="hang",
        path="/api/all",
        timeout_ms=250,
        connections=500,
        quick_connections=100,
        ok_statuses=(200, 504),
        overshoot=True,
    ),
    Scenario(
        "first",
        "connection reuse: new upstream connections and requests per call, CPU per call",
        latency_ms="100-600",
        path="/api/first",
        timeout_ms=1000,
        connections=64,
        quick_connections=16,
        shape="object",
    ),
    Scenario(
        "overload",
        "far more callers than an in-flight cap: statuses, latency, memory",
        latency_ms="100-600",
        path="/api/all",
        timeout_ms=1000,
        connections=5000,
        quick_connections=1000,
        rss_series=True,
        client_shed=True,
    ),
]

# `smart`: /api/smart's hedge with today's fixed 300 ms and with `auto` (a percentile of recent latency,
# under a budget), against an upstream fast with a tail and one like the real upstream.
SMART_VARIANTS = (("fixed", ("--hedge-delay-ms=300",)), ("auto", ("--hedge-delay-ms=auto",)))


def smart_scenario(name: str, purpose: str, **upstream) -> Scenario:
    """/api/smart with 32 callers and a 2 s timeout, fanout alone, fixed and auto."""
    return Scenario(name, purpose, path="/api/smart", timeout_ms=2000, connections=32,
                    quick_connections=16, shape="object", variants=SMART_VARIANTS, **upstream)


SCENARIOS += [
    smart_scenario("smart-tail", "/api/smart against a fast upstream whose requests hang 5% of the "
                   "time: fixed 300 ms and auto", latency_ms="20-60", failure_rate=0.05,
                   failures="hang"),
    smart_scenario("smart-real", "/api/smart against an upstream like the real one (100-600 ms): "
                   "fixed 300 ms and auto", latency_ms="100-600"),
]
# What `auto` must reach against fixed in the same run (the targets): p99 at most this many ms,
# or at most this factor of fixed's p99; upstream requests per call at most this many.
SMART_TARGETS = {"smart-tail": {"p99_ms": 120, "requests_per_call": 1.25},
                 "smart-real": {"p99_vs_fixed": 1.05, "requests_per_call": 1.3}}
# Handshake storms (`cold-start`, `upstream-reset`): the capacity load when every upstream connection
# must be made at once, on a fresh process or after the upstream reset them all.
CAPACITY = next(s for s in SCENARIOS if s.name == "capacity")
SCENARIOS += [
    replace(CAPACITY, name="cold-start", cold=True, overshoot=True, server_log=True, warm=6000,
            purpose="the capacity load on a fresh process: the first wave of 2,000 calls needs "
                    "6,000 upstream connections, which fanout opens before /readyz says ready"),
    replace(CAPACITY, name="upstream-reset", reset_upstream=True, overshoot=True, server_log=True,
            purpose="the capacity load while the simulator resets every connection halfway: every "
                    "pooled connection is made again at once"),
]

# `impatient` (impatient.py): callers who leave, and what their calls leave behind.
SCENARIOS.append(Scenario(
    "impatient",
    "callers who leave: 500 give up after 200 ms on /api/all?timeout=5000 with 20% of upstream "
    "requests hanging, beside 20 patient callers of /api/first",
    latency_ms="100-600", failure_rate=0.2, failures="hang", path="/api/all", timeout_ms=5000,
    connections=500, quick_connections=100, duration_s=8, give_up_ms=200,
    patient=("/api/first?timeout=1000", 20)))
# A name on the command line that stands for several scenarios.
SCENARIO_GROUPS = {"smart": ("smart-tail", "smart-real")}
SCENARIO_NAMES = [s.name for s in SCENARIOS]

# Overshoot shares: responses later than these many ms past the deadline.
LATE_MS = (5, 25)
# In `overload`, the share of shed answers the client saw within these many ms (client_shed).
SHED_MS = (5, 25)


def scenarios_named(names: list[str]) -> list[Scenario]:
    """The scenarios the command line named, in its order, groups (`smart`) expanded."""
    expanded = [one for name in names for one in SCENARIO_GROUPS.get(name, (name,))]
    return [s for name in expanded for s in SCENARIOS if s.name == name]
