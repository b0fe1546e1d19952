"""fanout's own figures: its admin listener's GET /metrics (Prometheus text), scraped right before and
right after the measured load, and the difference of the two scrapes.

bench/README.md, "Why server-side figures" and the `server` table, says what each figure means. Only
fanout has these; the peer's figures are the client's and /proc's.
"""

from __future__ import annotations

import http.client
import re

from .common import BenchError
from .scenarios import Scenario

OVERSHOOT = "fanout_deadline_overshoot_seconds"
SERVER_DURATION = "fanout_http_server_request_duration_seconds"
SHED_TOTAL = "fanout_calls_shed_total"
ACTIVE = "fanout_http_server_active_requests"
RSS_BYTES = "process_resident_memory_bytes"
LEAD = "fanout_deadline_lead_seconds"
HEDGE_DELAY = "fanout_smart_hedge_delay_seconds"
SHARE_BOUNDS_S = {"within_5ms": 0.005, "within_25ms": 0.025}
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Sample = tuple[str, frozenset, float]  # name, labels as (key, value) pairs, value


def scrape(port: int) -> list[Sample]:
    """GET /metrics on fanout's admin port: every sample, as (name, labels, value)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"fanout's /metrics on port {port} failed: {e}") from e
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"fanout's /metrics answered {response.status}: {body[:200]!r}")
    samples = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        samples.append((name, frozenset(_LABEL.findall(labels)), float(value)))
    return samples


def gauge(samples: list[Sample], name: str) -> float | None:
    return next((v for n, _l, v in samples if n == name), None)


def counter_delta(before: list[Sample], after: list[Sample], name: str) -> float:
    """The increase of a counter, summed over all its label sets."""
    return (sum(v for n, _l, v in after if n == name)
            - sum(v for n, _l, v in before if n == name))


def histogram_delta(before: list[Sample], after: list[Sample], name: str,
                    **labels: str) -> dict[float, float]:
    """{upper bound: cumulative count} of the observations made between two scrapes, for the
    series of `name` with these labels (a series missing before the run counts as empty)."""
    want = set(labels.items())

    def buckets(samples: list[Sample]) -> dict[float, float]:
        out = {}
        for n, l, v in samples:
            if n == f"{name}_bucket" and want <= l:
                out[float(dict(l)["le"])] = v  # float("+Inf") is inf
        return out

    b0, b1 = buckets(before), buckets(after)
    return {le: count - b0.get(le, 0.0) for le, count in sorted(b1.items())}


def share_at_most(cumulative: dict[float, float], bound: float) -> float | None:
    """The share of observations <= bound, from the bucket at that bound, or the nearest lower
    one if the histogram has no such bound (an undercount; bench/README.md says so)."""
    total = cumulative.get(float("inf"), 0.0)
    lower = [le for le in cumulative if le <= bound]
    if not total or not lower:
        return None
    return round(cumulative[max(lower)] / total, 5)


def histogram_summary(cumulative: dict[float, float]) -> dict:
    """calls, the shares within 5 and 25 ms, and the upper bound of the highest non-empty bucket
    (\"+Inf\" beyond the largest finite bound, null without calls)."""
    total = cumulative.get(float("inf"), 0.0)
    top = min((le for le, count in cumulative.items() if count >= total), default=None)
    return {
        "calls": int(total),
        **{key: share_at_most(cumulative, bound) for key, bound in SHARE_BOUNDS_S.items()},
        "max_bucket_s": (None if not total else "+Inf" if top == float("inf") else top),
    }


def server_figures(before: list[Sample], after: list[Sample], scenario: Scenario) -> dict:
    """fanout's own view of the measured run: the difference of two /metrics scrapes."""
    overshoot = histogram_delta(before, after, OVERSHOOT)
    shed = histogram_delta(before, after, SERVER_DURATION, http_route=scenario.path,
                           http_response_status_code="503")
    shed_summary = histogram_summary(shed)
    figures = {
        "overshoot": {**histogram_summary(overshoot),
                      "in_time": share_at_most(overshoot, 0.0)},
        "shed": {"calls": shed_summary["calls"],
                 "p_max_bucket_s": shed_summary["max_bucket_s"],
                 "within_5ms": shed_summary["within_5ms"],
                 "shed_total": int(counter_delta(before, after, SHED_TOTAL))},
        "active_requests_before": gauge(before, ACTIVE),
        "rss_mib_after": round(gauge(after, RSS_BYTES) / 2**20, 1),
    }
    if scenario.path == "/api/smart":
        figures["hedges"] = {kind: int(counter_delta(before, after, f"fanout_smart_hedges{suffix}_total"))
                             for kind, suffix in (("fired", ""), ("won", "_won"),
                                                  ("refused", "_refused"))}
        delay = gauge(after, HEDGE_DELAY)
        figures["hedge_delay_ms_after"] = None if delay is None else round(delay * 1000, 1)
    lead = gauge(after, LEAD)
    if lead is not None:  # (fanout builds from before the deadline lead have none)
        figures["lead_ms_after"] = round(lead * 1000, 2)
    # Shed answers are responses with a deadline too, written long before it (overshoot 0): the
    # overshoot of the accepted calls alone takes them out of the le="0" bucket and up. Only valid
    # when every shed answer was written within the deadline.
    shed_calls = shed.get(float("inf"), 0.0)
    if shed_calls:
        in_deadline = [le for le in shed if le <= scenario.timeout_ms / 1000]
        if in_deadline and shed[max(in_deadline)] == shed_calls:
            accepted = {le: count - shed_calls for le, count in overshoot.items()}
            figures["overshoot_accepted"] = {**histogram_summary(accepted),
                                             "in_time": share_at_most(accepted, 0.0)}
        else:
            figures["overshoot_accepted"] = None
    return figures
