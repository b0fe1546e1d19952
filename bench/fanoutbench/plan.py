"""How long and how hard one run loads the server: connections, the warm-up and its pause, the measured
load, its measurement window, and the latency thresholds the load generator counts at.

bench/README.md, "Why a warm-up" and "Why a window", says why each is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from .scenarios import LATE_MS, SHED_MS, Scenario

# The warm-up load before each measured one (seconds; --quick uses the second).
WARMUP_S, QUICK_WARMUP_S = 3.0, 1.0
# After the warm-up, wait this long past the scenario's deadline before the measured run, so the
# warm-up's calls still in flight (the client drops them when it stops) have been answered and are not
# counted in the measured run. Upstream pools stay warm: fanout closes idle upstream connections
# after 4 s, and this pause is at most WARMUP_PAUSE_MAX_S.
WARMUP_PAUSE_AFTER_DEADLINE_S, WARMUP_PAUSE_MAX_S = 0.25, 2.0
# --quick's measured load, whatever the scenario's own duration.
QUICK_DURATION_S = 3


@dataclass(frozen=True)
class Plan:
    connections: int
    duration_s: int  # the measured load
    warmup_s: float  # the warm-up load before it, discarded
    warmup_pause_s: float  # between the two
    # The measurement window (see bench/wrk.lua): per-call figures are taken between these
    # instants, seconds after the load's start and before its end, leaving out the start and the
    # calls cut off at the end.
    window_from_s: float
    window_tail_s: float
    # The load generator counts the responses at or below each of these latencies: the deadline
    # plus LATE_MS, and (client_shed) SHED_MS.
    thresholds_us: list[int]

    def window(self, started: float) -> tuple[float, float]:
        """The window's two instants on the monotonic clock, for a load started at `started`."""
        return (started + self.window_from_s, started + self.duration_s - self.window_tail_s)


def plan_run(scenario: Scenario, quick: bool) -> Plan:
    duration_s = QUICK_DURATION_S if quick else scenario.duration_s
    late_us = [(scenario.timeout_ms + ms) * 1000 for ms in LATE_MS]
    shed_us = [ms * 1000 for ms in SHED_MS] if scenario.client_shed else []
    return Plan(
        connections=scenario.quick_connections if quick else scenario.connections,
        duration_s=duration_s,
        # A cold start has no warm-up, and its window starts with the load: the first wave counts.
        warmup_s=0.0 if scenario.cold else QUICK_WARMUP_S if quick else WARMUP_S,
        warmup_pause_s=0.0 if scenario.cold else min(
            WARMUP_PAUSE_MAX_S, scenario.timeout_ms / 1000 + WARMUP_PAUSE_AFTER_DEADLINE_S),
        window_from_s=0.0 if scenario.cold else min(2.0, duration_s / 4),
        window_tail_s=min(0.5, duration_s / 10),
        thresholds_us=late_us + shed_us,
    )
