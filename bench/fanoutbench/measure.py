"""One measured run: a fresh simulator and server, the check request, the warm-up, the measured load
and the server sampled around it; bench/README.md's "What one run does", one function a step.

`run_one` reads as that list. Every process a run starts belongs to its `Processes` block, so it is
stopped when the run ends, however it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import BenchError, log
from .contract import check_one_request
from .loadgen import client_argv, client_env, read_measured
from .metrics import scrape
from .plan import Plan, plan_run
from .processes import Processes, free_port, wait_accepting, wait_finished, wait_ready
from .procfs import cpu_seconds, memory_mib, open_fds, steal_seconds
from .result import (DuringLoad, Observed, Readings, Settled, WindowEdge, result_head,
                     result_line)
from .scenarios import Scenario
from .serverlog import late_answers
from .servers import admin_port_of, fanout_argv, peer_argv
from .simulator import SimStats, simulator_argv


@dataclass
class Settings:
    quick: bool
    fanout_bin: Path
    peer_bin: Path
    clients: dict[str, str]  # load generator -> its path
    settle_s: float
    fanout_args: tuple[str, ...] = ()
    # --pin: the server under test on these CPUs, the simulator and the load generator on the others.
    server_cpus: frozenset[int] | None = None
    other_cpus: frozenset[int] | None = None


@dataclass
class Servers:
    """The processes under test in one run, and where to reach them."""
    simulator: subprocess.Popen
    server: subprocess.Popen
    port: int
    admin_port: int | None  # fanout's /metrics; None for the peer, or with --admin-listen=off
    sim: SimStats


@dataclass
class Run:
    """What the steps of one run share: what is measured, how, and with which processes."""
    scenario: Scenario
    impl: str
    client: str
    settings: Settings
    plan: Plan
    rundir: Path
    procs: Processes
    servers: Servers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.servers.port}{self.scenario.endpoint}"

    def load_argv(self, seconds: float, measured: bool) -> list[str]:
        return client_argv(self.client, self.settings.clients[self.client], self.plan.connections,
                           seconds, self.url, self.rundir, measured=measured)

    def check_server_alive(self, when: str) -> None:
        server = self.servers.server
        if server.poll() is not None:
            raise BenchError(f"{self.impl} exited with {server.returncode} {when}:\n"
                             f"{self.procs.log_tail(server)}")


def run_one(scenario: Scenario, impl: str, client: str, settings: Settings,
            workdir: Path) -> dict:
    """Measures `impl` under `scenario`'s load from `client`, and returns its JSON line (less the
    stamp). Raises BenchError when the run could not be measured."""
    plan = plan_run(scenario, settings.quick)
    # Its own directory, also when a scenario is given twice (--scenario cpu cpu).
    rundir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-{impl}-{client}-", dir=workdir))
    with Processes(rundir) as procs:
        servers = start_servers(procs, scenario, impl, settings, rundir)
        try:
            observed = observe(Run(scenario, impl, client, settings, plan, rundir, procs, servers))
        finally:
            servers.sim.close()
    return {**result_head(scenario, impl, client, plan.connections),
            **result_line(scenario, plan, observed)}


def start_servers(procs: Processes, scenario: Scenario, impl: str, settings: Settings,
                  rundir: Path) -> Servers:
    """Steps 1 and 2: a fresh simulator, writing its test CA into the run's directory, then the
    server in front of it; both must accept connections (and fanout's admin port)."""
    ca = rundir / "sim-ca.pem"
    sim_port = free_port()
    simulator = procs.start("simulator",
                            simulator_argv(settings.fanout_bin, sim_port, scenario, ca),
                            cpus=settings.other_cpus)
    wait_accepting(procs, simulator, "simulator", sim_port, also=ca)

    port = free_port()
    admin_port = (admin_port_of(settings.fanout_args, free_port())
                  if impl == "fanout" else None)
    warm = (f"--upstream-warm={scenario.warm}",) if scenario.warm else ()
    argv = (fanout_argv(settings.fanout_bin, warm + settings.fanout_args, port, sim_port, ca, admin_port)
            if impl == "fanout" else peer_argv(settings.peer_bin, port, sim_port, ca))
    server = procs.start(impl, argv, cpus=settings.server_cpus)
    wait_accepting(procs, server, impl, port)
    if admin_port is not None:
        wait_accepting(procs, server, f"{impl} admin", admin_port)
        wait_ready(procs, server, admin_port)
    return Servers(simulator, server, port, admin_port, SimStats(sim_port, ca))


def observe(run: Run) -> Observed:
    """Steps 3 to 7: the check request, the warm-up, the measured load with the server sampled
    around it, and the server once the load has settled."""
    check = check_one_request(run.servers.port, run.scenario, run.servers.sim)
    rss_before_warmup = memory_mib(run.servers.server.pid)["VmRSS"]
    if not run.scenario.cold:
        warm_up(run)
    before = read_before_load(run.servers)
    started_wall = time.time()
    load, started, window = start_load(run)
    during = sample_during_load(run, load, started, window)
    after = read_after_load(run.servers)
    if load.returncode != 0:
        raise BenchError(f"{run.client} exited with {load.returncode}:\n"
                         f"{run.procs.log_tail(load, 40)}")
    report = read_measured(run.client, run.rundir, run.plan.thresholds_us, window, started,
                           run.plan.connections)
    settled = settle(run)
    logfile = run.procs.logfile(run.servers.server)
    server_log = (late_answers(logfile, started_wall)
                  if run.scenario.server_log and run.impl == "fanout" and logfile else None)
    return Observed(check, rss_before_warmup, before, during, after, report, settled, server_log)


def warm_up(run: Run) -> None:
    """The warm-up, discarded: upstream connection pools fill and the first connections' TLS
    handshakes happen here, not in the measured run. The same load, from the same client, for a
    few seconds. Then a pause just past the deadline, so its calls cut off at the end are answered
    before the measured run."""
    plan = run.plan
    log(f"{run.scenario.name}/{run.impl}: warm-up {run.client} -c {plan.connections} -d "
        f"{plan.warmup_s:g}s, then {plan.warmup_pause_s:g} s pause")
    warmup = run.procs.start(f"{run.client}-warmup", run.load_argv(plan.warmup_s, measured=False),
                             env=client_env([], None), cpus=run.settings.other_cpus)
    wait_finished(run.procs, warmup, f"the warm-up {run.client}", plan.warmup_s)
    run.check_server_alive("during the warm-up")
    time.sleep(plan.warmup_pause_s)


def read_before_load(servers: Servers) -> Readings:
    """Right before the load. fanout's /metrics is scraped before the CPU times are read here, and
    after they are read at the end (read_after_load), so the scrapes' own work is not in `cpu_s`."""
    metrics = scrape(servers.admin_port) if servers.admin_port is not None else None
    server_cpu_s, simulator_cpu_s = cpu_seconds(servers.server.pid), cpu_seconds(servers.simulator.pid)
    steal_s = steal_seconds()
    return Readings(server_cpu_s, simulator_cpu_s, steal_s, metrics,
                    fds=open_fds(servers.server.pid),
                    rss_mib=memory_mib(servers.server.pid)["VmRSS"],
                    stats=servers.sim.get())


def start_load(run: Run) -> tuple[subprocess.Popen, float, tuple[float, float]]:
    """Step 6: the measured load; returns it, when it started, and its measurement window."""
    plan, scenario = run.plan, run.scenario
    log(f"{scenario.name}/{run.impl}: {run.client} -c {plan.connections} -d {plan.duration_s}s "
        f"{scenario.endpoint} (upstream {scenario.latency_ms} ms)")
    started = time.monotonic()
    window = plan.window(started)
    load = run.procs.start(run.client, run.load_argv(plan.duration_s, measured=True),
                           env=client_env(plan.thresholds_us, window), cpus=run.settings.other_cpus)
    return load, started, window


def sample_during_load(run: Run, load: subprocess.Popen, started: float,
                       window: tuple[float, float]) -> DuringLoad:
    """Until the load generator exits: open fds every half second (the sample nearest mid-run is
    "during"), CPU time and upstream counters at both ends of the window, and (rss_series) resident
    memory every second. The load generator is given 60 s past its duration."""
    server, sim, duration_s = run.servers.server, run.servers.sim, run.plan.duration_s
    mid = started + duration_s / 2
    during = DuringLoad()
    next_sample = started
    next_rss = started if run.scenario.rss_series else float("inf")
    while load.poll() is None:
        now = time.monotonic()
        if now > started + duration_s + 60:
            raise BenchError(f"{run.client} still running {duration_s + 60} s after it started")
        run.check_server_alive("under load")
        if len(during.window) < 2 and now >= window[len(during.window)]:
            during.window.append(WindowEdge(cpu_seconds(server.pid), sim.get(),
                                            cpu_seconds(load.pid)))
        if now >= next_sample:
            fds = open_fds(server.pid)
            during.fds_max = fds if during.fds_max is None else max(during.fds_max, fds)
            if during.fds_during is None and now >= mid:
                during.fds_during = fds
                during.upstream_open_during = sim.get()["connections_open"]
            next_sample = now + 0.5
        if now >= next_rss:
            during.rss_series.append(memory_mib(server.pid)["VmRSS"])
            next_rss += 1.0
        if run.scenario.reset_upstream and during.upstream_reset_s is None and now >= mid:
            # Every upstream connection dies at once, with a RST (the simulator's SIGUSR1).
            os.kill(run.servers.simulator.pid, signal.SIGUSR1)
            during.upstream_reset_s = round(now - started, 2)
        events = ([next_sample, next_rss]
                  + ([window[len(during.window)]] if len(during.window) < 2 else []))
        time.sleep(min(0.5, max(0.001, min(events) - time.monotonic())))
    run.check_server_alive("under load")
    if len(during.window) < 2:
        raise BenchError(f"{run.client} ended after {time.monotonic() - started:.1f} s, "
                         f"before the measurement window closed")
    return during


def read_after_load(servers: Servers) -> Readings:
    """Right after the load: the CPU times first, then fanout's metrics (see read_before_load) and
    the upstream's counters."""
    server_cpu_s, simulator_cpu_s = cpu_seconds(servers.server.pid), cpu_seconds(servers.simulator.pid)
    steal_s = steal_seconds()
    metrics = scrape(servers.admin_port) if servers.admin_port is not None else None
    return Readings(server_cpu_s, simulator_cpu_s, steal_s, metrics, stats=servers.sim.get())


def settle(run: Run) -> Settled:
    """A few seconds later, once idle connections had a chance to close."""
    time.sleep(run.settings.settle_s)
    pid = run.servers.server.pid
    return Settled(fds=open_fds(pid), memory=memory_mib(pid), stats=run.servers.sim.get())
