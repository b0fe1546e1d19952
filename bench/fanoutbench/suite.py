"""Every scenario in turn: the order of the runs, their JSON lines on stdout, the comparison lines, and
at the end the table on stderr (and the charts, with --plot).

Which implementation goes first changes from one scenario to the next, so that neither always runs on
a machine still busy from the other (bench/README.md, "What one run does").
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, BenchError, log
from .compare import comparisons_of
from .impatient import run_impatient
from .measure import Settings, run_one
from .plot import plot_all
from .report import smart_lines, summary_table
from .scenarios import Scenario


def run_suite(scenarios: list[Scenario], impls: list[str], settings: Settings,
              plot_dir: Path | None) -> int:
    """Runs every scenario, printing each line as soon as it is known. The exit status: 1 if a run
    failed (or --plot had nothing to draw), else 0."""
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
             "cores": os.cpu_count()}
    clients = list(settings.clients)
    results, comparisons, smart = [], [], []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        for index, scenario in enumerate(scenarios):
            by_run = {}
            for impl, client, variant in runs_of(scenario, index, impls, clients):
                result = run_recorded(scenario, impl, client, variant, settings, Path(tmp), stamp)
                results.append(result)
                by_run[impl if variant is None else variant, client] = result
                print(json.dumps(result), flush=True)
            for comparison in comparisons_of(scenario, clients, by_run):
                (smart if scenario.variants else comparisons).append(comparison)
                print(json.dumps(comparison), flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    print(summary_table(results, comparisons), file=sys.stderr)
    if smart:
        print("\n".join(smart_lines(smart)), file=sys.stderr)
    failed = sum("error" in r for r in results)
    if plot_dir and not plot_all(results, plot_dir):
        failed += 1
    return 1 if failed else 0


def run_recorded(scenario: Scenario, impl: str, client: str, variant: str | None,
                 settings: Settings, workdir: Path, stamp: dict) -> dict:
    """One run's JSON line: its figures and the stamp, or, when it could not be measured, what ran
    and the `error` (logged too). A variant adds its fanout arguments and its name."""
    if variant:
        settings = dataclasses.replace(
            settings, fanout_args=settings.fanout_args + dict(scenario.variants)[variant])
    try:
        if scenario.give_up_ms:
            result = {**run_impatient(scenario, impl, settings, workdir), **stamp}
        else:
            result = {**run_one(scenario, impl, client, settings, workdir), **stamp}
    except BenchError as e:
        result = {"scenario": scenario.name, "implementation": impl, "client": client,
                  "endpoint": scenario.endpoint, "error": str(e)}
        log(f"{scenario.name}/{impl}/{client}: FAILED: {e}")
    if variant:
        result["variant"] = variant
    return result


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
