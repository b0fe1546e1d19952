"""The comparison lines a scenario ends with: fanout's figures as ratios to the peer's, or, for the
`smart` scenarios, `auto` against `fixed` and whether the issue's targets are met.

Only between runs of one scenario that both succeeded: they ran minutes apart on the same machine,
which is what makes a ratio worth more than either figure (bench/README.md, "Caveats").
"""

from __future__ import annotations

from .scenarios import SMART_TARGETS, Scenario


def comparisons_of(scenario: Scenario, clients: list[str], by_run: dict) -> list[dict]:
    """Per load generator: auto against fixed (a scenario with variants), or fanout / peer. `by_run`
    maps (implementation or variant, client) to that run's JSON line."""
    lines = []
    for client in clients:
        if scenario.variants:
            a, b, compare = by_run.get(("fixed", client)), by_run.get(("auto", client)), smart_comparison
        else:
            a, b, compare = by_run.get(("fanout", client)), by_run.get(("peer", client)), ratios
        if a and b and "error" not in a and "error" not in b and not scenario.give_up_ms:
            lines.append(compare(scenario.name, client, a, b))
    return lines


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
