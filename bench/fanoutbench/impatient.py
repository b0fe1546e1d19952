"""`impatient`: callers who leave (bench/README.md, "Scenarios").

Impatient callers ask /api/all?timeout=5000 of an upstream where 20% of requests hang, and give up after
200 ms (oha's `-t`, which closes the connection, as a client with a timeout of its own does); beside them,
a few patient callers ask /api/first?timeout=1000. A server that keeps working for callers who left fills
its in-flight limit with calls nobody will read: the patient callers are then shed, and the upstream keeps
serving requests nobody waits for.

For fanout and the peer: the patient callers' statuses, upstream requests per call, upstream requests in
flight at the simulator mid-run, and once both loads have ended (every caller gone), how long until the
simulator's in-flight requests and fanout's in-flight calls are back to 0. fanout's requests already on the
wire may finish for `--upstream-linger-ms` (1 s) to save their connections: its lingering gauge 100 ms
after the end says how many of the simulator's in-flight requests those are.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from .common import BenchError, log
from .loadgen import find_client
from .measure import Settings, Servers, start_servers
from .processes import Processes
from .procfs import cpu_seconds
from .metrics import ACTIVE, gauge, scrape
from .scenarios import Scenario

LINGERING = "fanout_upstream_pool_lingering"
SERVER_DURATION_COUNT = "fanout_http_server_request_duration_seconds_count"
# How long after the last caller left the server and the simulator are watched, and how often.
WATCH_S, WATCH_EVERY_S = 3.0, 0.01
# The moment after the last caller left at which the leftovers are counted (the target).
SOON_S = 0.1


def run_impatient(scenario: Scenario, impl: str, settings: Settings, workdir: Path) -> dict:
    """Both loads at once for the scenario's duration, the servers sampled mid-run, then watched
    until nothing is left in flight. Returns the JSON line (less the stamp)."""
    seconds = 3 if settings.quick else scenario.duration_s
    impatient_n = scenario.quick_connections if settings.quick else scenario.connections
    patient_path, patient_n = scenario.patient
    rundir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-{impl}-", dir=workdir))
    with Processes(rundir) as procs:
        servers = start_servers(procs, scenario, impl, settings, rundir)
        try:
            base = f"http://127.0.0.1:{servers.port}"
            metrics0 = scrape(servers.admin_port) if servers.admin_port else None
            stats0 = servers.sim.get()
            sim_cpu0 = cpu_seconds(servers.simulator.pid)
            log(f"{scenario.name}/{impl}: {impatient_n} callers of {scenario.endpoint} giving up "
                f"after {scenario.give_up_ms} ms, {patient_n} of {patient_path}, {seconds} s")
            loads = [
                procs.start("impatient", oha_argv(settings, impatient_n, seconds,
                                                  base + scenario.endpoint, rundir / "impatient.json",
                                                  give_up_ms=scenario.give_up_ms),
                            cpus=settings.other_cpus),
                procs.start("patient", oha_argv(settings, patient_n, seconds, base + patient_path,
                                                rundir / "patient.json"),
                            cpus=settings.other_cpus),
            ]
            mid = wait_loads(loads, servers, seconds)
            ended = time.monotonic()
            after = watch_after(servers, ended)
            stats1 = servers.sim.get()
            sim_cpu1 = cpu_seconds(servers.simulator.pid)
            metrics1 = scrape(servers.admin_port) if servers.admin_port else None
        finally:
            servers.sim.close()
    impatient, patient = (read_oha(rundir / f"{n}.json") for n in ("impatient", "patient"))
    calls = impatient["calls"] + patient["calls"]
    line = {
        "scenario": scenario.name, "implementation": impl, "client": "oha",
        "endpoint": scenario.endpoint, "connections": impatient_n, "duration_s": seconds,
        "give_up_ms": scenario.give_up_ms, "impatient": impatient,
        "patient": {"endpoint": patient_path, "connections": patient_n, **patient},
        "upstream": {"requests": stats1["requests"] - stats0["requests"],
                     "connections_opened": stats1["connections_accepted"] - stats0["connections_accepted"],
                     "requests_per_call": round((stats1["requests"] - stats0["requests"]) / calls, 3)
                     if calls else None,
                     # What the calls cost the upstream, handshakes and requests alike (and the
                     # lingering ones): the simulator's CPU per 1,000 calls.
                     "cpu_s_per_1000_calls": round((sim_cpu1 - sim_cpu0) / calls * 1000, 4)
                     if calls else None},
        "mid_run": mid, "after_callers_left": after,
    }
    if metrics0 is not None and metrics1 is not None:
        line["server_calls_by_status"] = statuses_delta(metrics0, metrics1)
    return line


def oha_argv(settings: Settings, connections: int, seconds: float, url: str, output: Path,
             give_up_ms: int | None = None) -> list[str]:
    oha = settings.clients.get("oha") or find_client("oha")  # whatever --client says: oha's -t
    argv = [oha, "-c", str(connections), "-z", f"{seconds:g}s", "--no-tui",
            "--worker-threads", "2", "--output-format", "json", "--output", str(output)]
    return argv + (["-t", f"{give_up_ms}ms"] if give_up_ms else []) + [url]


def wait_loads(loads: list[subprocess.Popen], servers: Servers, seconds: float) -> dict:
    """Until both load generators exit (at most 60 s past their duration); the servers' figures at
    mid-run."""
    started, mid = time.monotonic(), None
    while any(load.poll() is None for load in loads):
        now = time.monotonic()
        if now > started + seconds + 60:
            raise BenchError(f"oha still running {seconds + 60:g} s after it started")
        if servers.server.poll() is not None:
            raise BenchError(f"the server exited with {servers.server.returncode} under load")
        if mid is None and now >= started + seconds / 2:
            mid = in_flight(servers)
        time.sleep(0.05)
    for load in loads:
        if load.returncode != 0:
            raise BenchError(f"oha exited with {load.returncode}")
    return mid or in_flight(servers)


def in_flight(servers: Servers) -> dict:
    """What is in flight now: upstream requests at the simulator, and fanout's calls and lingering
    requests (None for the peer)."""
    metrics = scrape(servers.admin_port) if servers.admin_port else None
    return {"upstream_requests": servers.sim.get()["in_flight"],
            "calls": None if metrics is None else gauge(metrics, ACTIVE),
            "lingering": None if metrics is None else gauge(metrics, LINGERING)}


def watch_after(servers: Servers, ended: float) -> dict:
    """From the moment the last caller left: what is in flight SOON_S later, and how long until the
    simulator's in-flight requests and fanout's in-flight calls were 0 (None: not within WATCH_S)."""
    soon, zero_at = None, {"upstream_requests": None, "calls": None}
    while time.monotonic() < ended + WATCH_S:
        now = in_flight(servers)
        since = time.monotonic() - ended
        if soon is None and since >= SOON_S:
            soon = now
        for key in zero_at:
            if zero_at[key] is None and now[key] in (0, None):
                zero_at[key] = None if now[key] is None else round(since * 1000)
        if soon is not None and all(now[k] in (0, None) for k in zero_at):
            break
        time.sleep(WATCH_EVERY_S)
    return {f"after_{SOON_S * 1000:g}ms": soon,
            "zero_after_ms": zero_at}


def read_oha(path: Path) -> dict:
    """Calls made (answered, or given up) and their outcomes, from oha's JSON summary."""
    data = json.loads(path.read_text())
    statuses = {str(k): v for k, v in sorted(data.get("statusCodeDistribution", {}).items())}
    errors = dict(data.get("errorDistribution", {}))
    return {"calls": sum(statuses.values()) + sum(errors.values()), "statuses": statuses,
            "errors": errors}


def statuses_delta(before, after) -> dict[str, int]:
    """fanout's own count of calls by status over the run (499: the caller left)."""
    by_status: dict[str, float] = {}
    for name, labels, value in after:
        if name == SERVER_DURATION_COUNT:
            status = dict(labels)["http_response_status_code"]
            by_status[status] = by_status.get(status, 0) + value
    for name, labels, value in before:
        if name == SERVER_DURATION_COUNT:
            status = dict(labels)["http_response_status_code"]
            by_status[status] = by_status.get(status, 0) - value
    return {s: int(n) for s, n in sorted(by_status.items()) if n}


def impatient_lines(r: dict) -> list[str]:
    """The table's lines for one run."""
    if "error" in r:
        return [f"{r['scenario']:<10} {r['implementation']:<7} ERROR: {r['error'].splitlines()[0][:100]}"]
    after, mid = r["after_callers_left"], r["mid_run"]
    soon = after[f"after_{SOON_S * 1000:g}ms"] or {}
    zero = after["zero_after_ms"]
    patient = r["patient"]
    return [
        f"{r['scenario']:<10} {r['implementation']:<7} impatient calls {r['impatient']['calls']}, "
        f"patient {patient['endpoint']}: {patient['statuses']} errors {patient['errors']}",
        f"{'':<18} upstream requests per call {r['upstream']['requests_per_call']}, connections opened "
        f"{r['upstream']['connections_opened']}, upstream CPU-s per 1,000 calls "
        f"{r['upstream'].get('cpu_s_per_1000_calls')}; in flight mid-run: "
        f"{mid['upstream_requests']} at the simulator, {mid['calls']} calls",
        f"{'':<18} {SOON_S * 1000:g} ms after the last caller left: {soon.get('upstream_requests')} at "
        f"the simulator ({soon.get('lingering')} lingering), {soon.get('calls')} calls; back to 0 "
        f"after {zero['upstream_requests']} ms (simulator), {zero['calls']} ms (calls)",
    ]

