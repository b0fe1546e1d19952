"""`--plot`: latency by percentile, one chart per scenario (matplotlib, optional).

matplotlib is imported only here, and only when a chart is drawn: nothing else in the bench needs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .common import log
from .loadgen import PERCENTILES
from .scenarios import SCENARIOS

MATPLOTLIB_MISSING = ("bench: {what} needs matplotlib, which is not installed; install it with\n"
                      "    pip install -r bench/requirements.txt")
# Colour and marker by implementation, line style by load generator.
STYLES = {"fanout": ("#1f5fa8", "o"), "peer": ("#c8461d", "s")}
LINESTYLES = {"oha": "-", "wrk": ":"}


def require_matplotlib(what: str = "--plot") -> None:
    try:
        import matplotlib  # noqa: F401  (optional: only --plot and waterfall.py need it)
    except ImportError:
        raise SystemExit(MATPLOTLIB_MISSING.format(what=what)) from None


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


def read_results(path: Path) -> list[dict]:
    """The runs' lines of an earlier run's JSON lines (for --from), its comparison lines left out."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [r for r in lines if "implementation" in r]
