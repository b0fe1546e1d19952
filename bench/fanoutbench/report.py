"""The table for people, on stderr: one row per run, with the server's own figures and the targets'
verdicts under fanout's rows, then the ratios, and the `smart` scenarios' lines.

Formatting only: every figure comes from the JSON lines (bench/README.md, "Output").
"""

from __future__ import annotations

from .impatient import impatient_lines


def summary_table(results: list[dict], comparisons: list[dict]) -> str:
    head = (f"{'scenario':<10} {'impl':<7} {'client':<6} {'conns':>5} {'req/s':>8} {'p50ms':>7} "
            f"{'p99ms':>7} "
            f"{'maxms':>7} {'non2xx':>7} {'sockerr':>7} {'cpu/1k':>7} {'rssMiB':>7} "
            f"{'fds b/d/a':>17} {'up c/1k':>8} {'up r/c':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines += impatient_lines(r) if r["scenario"] == "impatient" else run_lines(r)
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


def run_lines(r: dict) -> list[str]:
    """One run's row (its error's first line when it failed), and under it the client's deadline
    figures, fanout's own and the memory series, where the run has them."""
    if "error" in r:
        return [f"{r['scenario']:<10} {r['implementation']:<7} {r['client']:<6} ERROR: "
                f"{r['error'].splitlines()[0][:100]}"]
    lat, fds, up = r["latency_ms"], r["open_fds"], r["upstream"]
    errs = sum(n for kind, n in r["client_errors"].items() if kind != "cut_off")
    fd_text = f"{fds['before']}/{fds['during']}/{fds['after']}"
    client = r["client"] + ("*" if r["latency_corrected"] else "")
    lines = [
        f"{r['scenario']:<10} {r.get('variant', r['implementation']):<7} {client:<6} "
        f"{r['connections']:>5} "
        f"{r['rps']:>8.1f} {lat['p50']:>7.1f} {lat['p99']:>7.1f} {lat['max']:>7.1f} "
        f"{r['non_2xx']:>7} {errs:>7} {fmt(r['cpu_s_per_1000_calls'], 3):>7} "
        f"{r['rss_mib']['peak']:>7.1f} {fd_text:>17} "
        f"{fmt(up['connections_per_1000_calls'], 1):>8} {fmt(up['requests_per_call'], 2):>6}"]
    lines += deadline_lines(r, "")
    if "as_wrk" in r:
        lines += deadline_lines(r["as_wrk"], " as wrk would count them (corrected)")
    if "server" in r:
        lines += server_lines(r)
    if "server_log" in r:
        lines += server_log_lines(r)
    if "rss_mib_series" in r:
        series = r["rss_mib_series"]
        lines.append(f"{'':<25} rss MiB every 1 s: {' '.join(f'{v:g}' for v in series)}"
                     + (f" (min {min(series):g}, max {max(series):g}, after "
                        f"{r['rss_mib']['after']:g})" if series else ""))
    return lines


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


def server_log_lines(r: dict) -> list[str]:
    """fanout's late answers by its own access log (cold-start, upstream-reset), against the target:
    at most 0.1% more than 5 ms late and none more than 25 ms."""
    pad = " " * 25
    g = r["server_log"]
    over5, over25 = g["over_5ms"], g["over_25ms"]
    reset = f"; upstream reset at {r['upstream_reset_at_s']} s" if "upstream_reset_at_s" in r else ""
    met = g["answers"] and (over5["share"] or 0) <= 0.001 and over25["count"] == 0
    return [f"{pad} server log: n={g['answers']} >5ms late {over5['count']} ({pct(over5['share'])}), "
            f">25ms {over25['count']}, worst {g['max_overshoot_ms']} ms; late by second "
            f"{g['late_by_second']}, of them with no upstream answer "
            f"{g['late_with_no_upstream_answer']}{reset}",
            f"{pad} target <=0.1% >5ms late, none >25ms: {'met' if met else 'MISSED'}"]


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
