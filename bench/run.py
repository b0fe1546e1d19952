#!/usr/bin/env python3
"""fanout's benchmark: fanout and the conventional axum + reqwest peer, side by side.

    python3 bench/run.py [--quick] [--scenario NAME ...] [--only fanout|peer]

For each scenario and each implementation it starts a fresh simulated upstream
(`fanout simulator`, over TLS, on its own port) and a fresh server, checks that one request is
answered correctly, warms it up with a short wrk run (discarded), drives it with wrk, and prints
one JSON line with what it saw (for fanout, also its own figures from its /metrics). After
both implementations of a scenario, one JSON line gives fanout's figures as ratios to the peer's.
A table for people goes to stderr. See bench/README.md for what every field means.

Python 3.11 standard library only. Every process it starts runs in its own session (so a Ctrl-C
in the terminal reaches only this script), dies with this script (PR_SET_PDEATHSIG), and is
stopped by its pid in a `finally`, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEER_MANIFEST = REPO.parent / "shared" / "peers" / "axum-reqwest" / "Cargo.toml"
FANOUT_BIN = REPO / "target" / "release" / "fanout"
PEER_BIN = REPO / "target" / "peers" / "release" / "peer-axum"
WRK_SCRIPT = BENCH_DIR / "wrk.lua"

IMPLEMENTATIONS = ("fanout", "peer")
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB_PER_MIB = 1024  # /proc/PID/status gives VmRSS and VmHWM in kB


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
    # Report the shed answers' latency as wrk saw it (client_shed). Only where no admitted call can be
    # answered within the largest of SHED_MS.
    client_shed: bool = False

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
SCENARIO_NAMES = [s.name for s in SCENARIOS]

# Overshoot shares: responses later than these many ms past the deadline.
LATE_MS = (5, 25)
# In `overload`, the share of shed answers wrk saw within these many ms (client_shed).
SHED_MS = (5, 25)

# The warm-up wrk run before each measured one (seconds; --quick uses the second).
WARMUP_S, QUICK_WARMUP_S = 3.0, 1.0
# After the warm-up, wait this long past the scenario's deadline before the measured run, so the
# warm-up's calls still in flight (wrk drops them when it stops) have been answered and are not
# counted in the measured run. Upstream pools stay warm: fanout closes idle upstream connections
# after 4 s, and this pause is at most WARMUP_PAUSE_MAX_S.
WARMUP_PAUSE_AFTER_DEADLINE_S, WARMUP_PAUSE_MAX_S = 0.25, 2.0


class BenchError(Exception):
    """A run that could not be measured (a process died, a check failed); the message says why."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in each child before exec: die with this script, and allow many open files."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Processes:
    """Every process a run starts. Leaving the `with` stops them all, by pid: SIGTERM, a grace
    period, then SIGKILL, and reaps them. Ctrl-C is ignored while stopping so it cannot leave
    half of them running."""

    GRACE_S = 5.0

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        logfile = self.logdir / f"{name}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_setup,
                start_new_session=True,
                env=env,
            )
        self.started.append((name, proc, logfile))
        return proc

    def log_tail(self, proc: subprocess.Popen, lines: int = 15) -> str:
        for _name, p, logfile in self.started:
            if p is proc:
                try:
                    text = logfile.read_text(errors="replace").splitlines()
                except OSError:
                    return ""
                return "\n".join(text[-lines:])
        return ""

    def stop(self, proc: subprocess.Popen, grace_s: float | None = None) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.GRACE_S if grace_s is None else grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            live = [p for _n, p, _l in self.started if p.poll() is None]
            for proc in live:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.GRACE_S
            for proc in live:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; a tiny race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(procs: Processes, proc: subprocess.Popen, name: str, port: int,
                   also: Path | None = None, limit_s: float = 20.0) -> None:
    """Waits until `port` accepts TCP connections (and the file `also` exists)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} before accepting:\n"
                             f"{procs.log_tail(proc)}")
        if also is None or also.exists():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
        time.sleep(0.05)
    raise BenchError(f"{name} did not accept connections on port {port} within {limit_s} s:\n"
                     f"{procs.log_tail(proc)}")


# ------------------------------------------------------------------------------------------------
# /proc
# ------------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def steal_seconds() -> float:
    """Time the hypervisor kept this machine's virtual CPUs from running although they had work
    (the `steal` column of /proc/stat, summed over all CPUs), in seconds: on a shared VM, stalls that
    no process here caused or could prevent."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu user nice system idle iowait irq softirq steal ..."
    return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak resident set since start), in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / KIB_PER_MIB, 1)
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ------------------------------------------------------------------------------------------------
# fanout's own figures: its admin listener's GET /metrics (Prometheus text)
# ------------------------------------------------------------------------------------------------

OVERSHOOT = "fanout_deadline_overshoot_seconds"
SERVER_DURATION = "fanout_http_server_request_duration_seconds"
SHED_TOTAL = "fanout_calls_shed_total"
ACTIVE = "fanout_http_server_active_requests"
RSS_BYTES = "process_resident_memory_bytes"
LEAD = "fanout_deadline_lead_seconds"
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


# ------------------------------------------------------------------------------------------------
# HTTP: the simulator's /stats and the check request
# ------------------------------------------------------------------------------------------------

class SimStats:
    """Reads the simulator's GET /stats over one kept-alive TLS connection, and takes that
    connection (and any reconnection) out of the figures it returns."""

    def __init__(self, port: int, ca: Path):
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        self.conn: http.client.HTTPSConnection | None = None
        self.own_connections = 0

    def get(self) -> dict[str, int]:
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPSConnection(
                        "localhost", self.port, context=self.context, timeout=10)
                    self.conn.connect()
                    self.own_connections += 1
                self.conn.request("GET", "/stats")
                response = self.conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise BenchError(f"simulator /stats answered {response.status}: {body[:200]!r}")
                stats = json.loads(body)
                return {
                    "connections_accepted": stats["connections_accepted"] - self.own_connections,
                    "connections_open": stats["connections_open"] - 1,
                    "requests": stats["requests"],
                }
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt == 1:
                    raise BenchError(f"simulator /stats failed: {e}") from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def is_work(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("time"), int)
            and not isinstance(value.get("time"), bool) and value["time"] >= 0)


def check_one_request(port: int, scenario: Scenario, sim: SimStats) -> dict:
    """One request through the server: the status is allowed, the body has the contract's shape,
    and the upstream saw requests for it. Returns what it saw."""
    before = sim.get()["requests"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.monotonic()
    try:
        conn.request("GET", scenario.endpoint)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"check request {scenario.endpoint} failed: {e}") from e
    finally:
        conn.close()
    elapsed_ms = (time.monotonic() - started) * 1000
    what = f"check {scenario.endpoint} -> {response.status} {body[:200]!r}"
    if response.status not in scenario.ok_statuses:
        raise BenchError(f"{what}: expected status {scenario.ok_statuses}")
    try:
        value = json.loads(body)
    except ValueError as e:
        raise BenchError(f"{what}: body is not JSON") from e
    if response.status != 200:
        good = isinstance(value, dict) and "error" in value
    elif scenario.shape == "object":
        good = is_work(value)
    else:
        good = (isinstance(value, list) and 0 < len(value) <= 3
                and all(is_work(v) for v in value))
    if not good:
        raise BenchError(f"{what}: not the contract's shape ({scenario.shape})")
    upstream_requests = sim.get()["requests"] - before
    if upstream_requests < 1:
        raise BenchError(f"{what}: but the simulator saw no upstream request")
    return {"status": response.status, "ms": round(elapsed_ms, 1),
            "upstream_requests": upstream_requests}


# ------------------------------------------------------------------------------------------------
# One measured run
# ------------------------------------------------------------------------------------------------

@dataclass
class Settings:
    quick: bool
    fanout_bin: Path
    peer_bin: Path
    wrk: str
    settle_s: float
    fanout_args: tuple[str, ...] = ()
    results: list = field(default_factory=list)


def server_argv(impl: str, settings: Settings, port: int, sim_port: int, ca: Path,
                admin_port: int | None) -> list[str]:
    listen = f"127.0.0.1:{port}"
    if impl == "fanout":
        # The admin listener on a free loopback port (its default, 0.0.0.0:8081, may be taken);
        # a --fanout-arg=--admin-listen=... given by hand comes later and wins.
        return [str(settings.fanout_bin), "--listen", listen,
                "--upstream", f"https://localhost:{sim_port}/api/work", "--upstream-ca", str(ca),
                "--admin-listen", f"127.0.0.1:{admin_port}", *settings.fanout_args]
    return [str(settings.peer_bin), "--listen", listen,
            "--upstream", f"https://localhost:{sim_port}", "--ca", str(ca)]


def admin_port_of(fanout_args: tuple[str, ...], default: int) -> int:
    """The admin port fanout will use: ours, unless --fanout-arg gave another --admin-listen."""
    port = default
    args = list(fanout_args)
    for i, arg in enumerate(args):
        value = (arg.split("=", 1)[1] if arg.startswith("--admin-listen=")
                 else args[i + 1] if arg == "--admin-listen" and i + 1 < len(args) else None)
        if value is not None:
            port = None if value == "off" else int(value.rsplit(":", 1)[1])
    return port


def run_wrk_warmup(procs: Processes, settings: Settings, server: subprocess.Popen, impl: str,
                   connections: int, seconds: float, url: str) -> None:
    """The warm-up: the same wrk load for a few seconds, its figures discarded."""
    argv = [settings.wrk, "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "10s", "-s", str(WRK_SCRIPT), url]
    warmup = procs.start("wrk-warmup", argv)
    try:
        warmup.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"the warm-up wrk still ran {seconds + 60:g} s after it started") from e
    if warmup.returncode != 0:
        raise BenchError(f"the warm-up wrk exited with {warmup.returncode}:\n"
                         f"{procs.log_tail(warmup)}")
    if server.poll() is not None:
        raise BenchError(f"{impl} exited with {server.returncode} during the warm-up:\n"
                         f"{procs.log_tail(server)}")


def run_one(scenario: Scenario, impl: str, settings: Settings, workdir: Path) -> dict:
    connections = scenario.quick_connections if settings.quick else scenario.connections
    duration_s = 3 if settings.quick else scenario.duration_s
    warmup_run_s = QUICK_WARMUP_S if settings.quick else WARMUP_S
    warmup_pause_s = min(WARMUP_PAUSE_MAX_S,
                         scenario.timeout_ms / 1000 + WARMUP_PAUSE_AFTER_DEADLINE_S)
    rundir = workdir / f"{scenario.name}-{impl}"
    rundir.mkdir()
    ca = rundir / "sim-ca.pem"
    result: dict = {
        "scenario": scenario.name,
        "implementation": impl,
        "endpoint": scenario.endpoint,
        "connections": connections,
        "upstream_latency_ms": scenario.latency_ms,
        "upstream_failures": (f"{scenario.failure_rate:g} {scenario.failures}"
                              if scenario.failure_rate else "none"),
    }
    with Processes(rundir) as procs:
        sim_port = free_port()
        sim_argv = [str(settings.fanout_bin), "simulator", "--listen", f"127.0.0.1:{sim_port}",
                    "--latency-ms", scenario.latency_ms, "--write-ca", str(ca)]
        if scenario.failure_rate:
            sim_argv += ["--failure-rate", str(scenario.failure_rate),
                         "--failures", scenario.failures]
        simulator = procs.start("simulator", sim_argv)
        wait_accepting(procs, simulator, "simulator", sim_port, also=ca)

        port = free_port()
        admin_port = (admin_port_of(settings.fanout_args, free_port())
                      if impl == "fanout" else None)
        server = procs.start(impl, server_argv(impl, settings, port, sim_port, ca, admin_port))
        wait_accepting(procs, server, impl, port)
        if admin_port is not None:
            wait_accepting(procs, server, f"{impl} admin", admin_port)

        sim = SimStats(sim_port, ca)
        try:
            result["check"] = check_one_request(port, scenario, sim)
            url = f"http://127.0.0.1:{port}{scenario.endpoint}"

            # The warm-up, discarded: upstream connection pools fill and the first connections'
            # TLS handshakes happen here, not in the measured run. Then a pause just past the
            # deadline, so its calls cut off at the end are answered before the measured run.
            rss_before_warmup = memory_mib(server.pid)["VmRSS"]
            log(f"{scenario.name}/{impl}: warm-up wrk -c {connections} -d {warmup_run_s:g}s, "
                f"then {warmup_pause_s:g} s pause")
            run_wrk_warmup(procs, settings, server, impl, connections, warmup_run_s, url)
            time.sleep(warmup_pause_s)

            # Before the load.
            metrics0 = scrape(admin_port) if admin_port is not None else None
            cpu0, sim_cpu0 = cpu_seconds(server.pid), cpu_seconds(simulator.pid)
            steal0 = steal_seconds()
            fds_before = open_fds(server.pid)
            rss_before = memory_mib(server.pid)["VmRSS"]
            stats0 = sim.get()

            # The measurement window (see bench/wrk.lua): per-call figures are taken between
            # these instants, leaving out the start and the calls cut off at the end.
            warmup_s, tail_s = min(2.0, duration_s / 4), min(0.5, duration_s / 10)
            started = time.monotonic()
            window = (started + warmup_s, started + duration_s - tail_s)
            late_us = [(scenario.timeout_ms + ms) * 1000 for ms in LATE_MS]
            shed_us = [ms * 1000 for ms in SHED_MS] if scenario.client_shed else []
            timeout_s = max(10, duration_s + 5)  # > the run: every latency lands in the histogram
            env = dict(os.environ,
                       BENCH_LATENCY_THRESHOLDS_US=",".join(map(str, late_us + shed_us)),
                       BENCH_WINDOW_NS=",".join(str(int(t * 1e9)) for t in window))
            wrk_argv = [settings.wrk, "-t", "2", "-c", str(connections), "-d", f"{duration_s}s",
                        "--timeout", f"{timeout_s}s", "--latency", "-s", str(WRK_SCRIPT), url]
            log(f"{scenario.name}/{impl}: wrk -c {connections} -d {duration_s}s "
                f"{scenario.endpoint} (upstream {scenario.latency_ms} ms)")
            wrk = procs.start("wrk", wrk_argv, env=env)

            # During: open fds every half second (the sample nearest mid-run is "during"), and
            # CPU time and upstream counters at both ends of the window.
            mid = started + duration_s / 2
            fds_during = fds_max = upstream_open_during = None
            at_window: list[tuple[float, dict]] = []
            next_sample = started
            rss_series: list[float] = []
            next_rss = started if scenario.rss_series else float("inf")
            while wrk.poll() is None:
                now = time.monotonic()
                if now > started + duration_s + 60:
                    raise BenchError(f"wrk still running {duration_s + 60} s after it started")
                if server.poll() is not None:
                    raise BenchError(f"{impl} exited with {server.returncode} under load:\n"
                                     f"{procs.log_tail(server)}")
                if len(at_window) < 2 and now >= window[len(at_window)]:
                    at_window.append((cpu_seconds(server.pid), sim.get()))
                if now >= next_sample:
                    fds = open_fds(server.pid)
                    fds_max = fds if fds_max is None else max(fds_max, fds)
                    if fds_during is None and now >= mid:
                        fds_during = fds
                        upstream_open_during = sim.get()["connections_open"]
                    next_sample = now + 0.5
                if now >= next_rss:
                    rss_series.append(memory_mib(server.pid)["VmRSS"])
                    next_rss += 1.0
                events = ([next_sample, next_rss]
                          + ([window[len(at_window)]] if len(at_window) < 2 else []))
                time.sleep(min(0.5, max(0.001, min(events) - time.monotonic())))
            if server.poll() is not None:
                raise BenchError(f"{impl} exited with {server.returncode} under load:\n"
                                 f"{procs.log_tail(server)}")
            if len(at_window) < 2:
                raise BenchError(f"wrk ended after {time.monotonic() - started:.1f} s, "
                                 f"before the measurement window closed")

            # Right after: CPU, the upstream's counters and fanout's metrics.
            cpu1, sim_cpu1 = cpu_seconds(server.pid), cpu_seconds(simulator.pid)
            steal1 = steal_seconds()
            metrics1 = scrape(admin_port) if admin_port is not None else None
            stats1 = sim.get()
            wrk_out = (rundir / "wrk.log").read_text(errors="replace")
            if wrk.returncode != 0:
                raise BenchError(f"wrk exited with {wrk.returncode}:\n{wrk_out[-2000:]}")
            report = parse_wrk(wrk_out)

            # A few seconds later, once idle connections had a chance to close.
            time.sleep(settings.settle_s)
            fds_after = open_fds(server.pid)
            memory = memory_mib(server.pid)
            stats2 = sim.get()
        finally:
            sim.close()

    calls = report["requests"]
    seconds = report["duration_us"] / 1e6
    latency = report["latency_us"]
    statuses = dict(sorted(report["statuses"].items()))
    non_2xx = sum(n for status, n in statuses.items() if not 200 <= int(status) < 300)
    (w_cpu0, w_stats0), (w_cpu1, w_stats1) = at_window
    window_calls = report["window_calls"]
    w_opened = w_stats1["connections_accepted"] - w_stats0["connections_accepted"]
    w_requests = w_stats1["requests"] - w_stats0["requests"]

    def per_call(value: float, scale: float, digits: int):
        return round(value / window_calls * scale, digits) if window_calls else None
    result.update({
        "warmup_s": warmup_run_s,
        "warmup_pause_s": round(warmup_pause_s, 2),
        "duration_s": round(seconds, 2),
        "requests": calls,
        "rps": round(calls / seconds, 1) if seconds else None,
        "latency_ms": {k: ms(latency[k]) for k in ("p50", "p90", "p99", "max")},
        "status_counts": statuses,
        "non_2xx": non_2xx,
        "socket_errors": {k: report["errors"].get(k, 0)
                          for k in ("connect", "read", "write", "timeout")},
        "window": {"from_s": round(warmup_s, 2), "to_s": round(duration_s - tail_s, 2),
                   "calls": window_calls},
        "cpu_s_per_1000_calls": per_call(w_cpu1 - w_cpu0, 1000, 4),
        "cpu_s": round(cpu1 - cpu0, 2),
        "rss_mib": {"before_warmup": rss_before_warmup, "before": rss_before,
                    "peak": memory["VmHWM"], "after": memory["VmRSS"]},
        "open_fds": {"before": fds_before, "during": fds_during, "max": fds_max,
                     "after": fds_after},
        "upstream": {
            "connections_per_1000_calls": per_call(w_opened, 1000, 2),
            "requests_per_call": per_call(w_requests, 1, 3),
            "connections_opened": stats1["connections_accepted"] - stats0["connections_accepted"],
            "requests": stats1["requests"] - stats0["requests"],
            "connections_open_during": upstream_open_during,
            "connections_open_after": stats2["connections_open"],
        },
        "simulator_cpu_s": round(sim_cpu1 - sim_cpu0, 2),
        "steal_s": round(steal1 - steal0, 2),
    })
    at_most = {row["us"]: row["count"] for row in report["at_most"]}

    def late_share(late_ms: int):
        """The share of responses later than the deadline + late_ms (exact, from wrk's counts)."""
        return (round((calls - at_most[(scenario.timeout_ms + late_ms) * 1000]) / calls, 5)
                if calls else None)
    if scenario.rss_series:
        result["rss_mib_series"] = rss_series
    if scenario.client_shed:
        # No admitted call can be answered within 25 ms here (every upstream request takes 100 ms or
        # more, and none fails), so the answers that fast are shed ones: their share of the 503s.
        shed = statuses.get("503", 0)
        result["client_shed"] = {
            "calls": shed,
            **{f"within_{bound}ms": round(at_most[bound * 1000] / shed, 5) if shed else None
               for bound in SHED_MS},
            "later_than_deadline_25ms": late_share(25),
        }
    if metrics0 is not None and metrics1 is not None:
        result["server"] = server_figures(metrics0, metrics1, scenario)
    if scenario.overshoot:
        deadline = scenario.timeout_ms
        result["overshoot_ms"] = {k: round(ms(latency[k]) - deadline, 1)
                                  for k in ("p50", "p90", "p99", "max")}
        result["late_share"] = {f"over_{late}ms": late_share(late) for late in LATE_MS}
    return result


def ms(us: float) -> float:
    return round(us / 1000, 1)


def parse_wrk(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise BenchError(f"no BENCH_JSON line in wrk's output:\n{output[-2000:]}")


# ------------------------------------------------------------------------------------------------
# Comparison and summary
# ------------------------------------------------------------------------------------------------

def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def ratios(scenario: str, fanout: dict, peer: dict) -> dict:
    return {
        "scenario": scenario,
        "comparison": "fanout / peer",
        "rps_ratio": ratio(fanout["rps"], peer["rps"]),
        "cpu_per_call_ratio": ratio(fanout["cpu_s_per_1000_calls"], peer["cpu_s_per_1000_calls"]),
        "p99_ratio": ratio(fanout["latency_ms"]["p99"], peer["latency_ms"]["p99"]),
        "connections_per_1000_ratio": ratio(fanout["upstream"]["connections_per_1000_calls"],
                                            peer["upstream"]["connections_per_1000_calls"]),
    }


def summary_table(results: list[dict], comparisons: list[dict]) -> str:
    head = (f"{'scenario':<10} {'impl':<7} {'conns':>5} {'req/s':>8} {'p50ms':>7} {'p99ms':>7} "
            f"{'maxms':>7} {'non2xx':>7} {'sockerr':>7} {'cpu/1k':>7} {'rssMiB':>7} "
            f"{'fds b/d/a':>17} {'up c/1k':>8} {'up r/c':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['scenario']:<10} {r['implementation']:<7} ERROR: "
                         f"{r['error'].splitlines()[0][:100]}")
            continue
        lat, fds, up = r["latency_ms"], r["open_fds"], r["upstream"]
        errs = sum(r["socket_errors"].values())
        fd_text = f"{fds['before']}/{fds['during']}/{fds['after']}"
        lines.append(
            f"{r['scenario']:<10} {r['implementation']:<7} {r['connections']:>5} "
            f"{r['rps']:>8.1f} {lat['p50']:>7.1f} {lat['p99']:>7.1f} {lat['max']:>7.1f} "
            f"{r['non_2xx']:>7} {errs:>7} {fmt(r['cpu_s_per_1000_calls'], 3):>7} "
            f"{r['rss_mib']['peak']:>7.1f} {fd_text:>17} "
            f"{fmt(up['connections_per_1000_calls'], 1):>8} {fmt(up['requests_per_call'], 2):>6}")
        if "overshoot_ms" in r:
            o, late = r["overshoot_ms"], r["late_share"]
            lines.append(f"{'':<18} overshoot ms p50 {o['p50']} p90 {o['p90']} p99 {o['p99']} "
                         f"max {o['max']}; late >5ms {late['over_5ms']:.2%}, "
                         f">25ms {late['over_25ms']:.2%}")
        if "server" in r:
            lines += server_lines(r)
        if r.get("client_shed", {}).get("calls"):
            c = r["client_shed"]
            lines.append(f"{'':<18} client: shed 503 n={c['calls']} <=5ms {pct(c['within_5ms'])}, "
                         f"<=25ms {pct(c['within_25ms'])}; answers >25ms past the deadline "
                         f"{pct(c['later_than_deadline_25ms'])}")
        if "rss_mib_series" in r:
            series = r["rss_mib_series"]
            lines.append(f"{'':<18} rss MiB every 1 s: {' '.join(f'{v:g}' for v in series)}"
                         + (f" (min {min(series):g}, max {max(series):g}, after "
                            f"{r['rss_mib']['after']:g})" if series else ""))
    if comparisons:
        lines += ["", "fanout / peer:"]
        for c in comparisons:
            lines.append(f"  {c['scenario']:<10} rps x{fmt(c['rps_ratio'], 2)}  "
                         f"cpu/call x{fmt(c['cpu_per_call_ratio'], 2)}  "
                         f"p99 x{fmt(c['p99_ratio'], 2)}  "
                         f"upstream conns/1000 x{fmt(c['connections_per_1000_ratio'], 2)}")
    return "\n".join(lines)


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(share) -> str:
    return "-" if share is None else f"{share:.2%}"


def bound(value) -> str:
    return "-" if value is None else f"<={value * 1000:g}ms" if isinstance(value, float) else value


def server_lines(r: dict) -> list[str]:
    """fanout's own figures (from /metrics) under its row, against the scenario's target."""
    pad = " " * 18
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


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def build(skip_fanout: bool, need_peer: bool) -> None:
    commands = []
    if not skip_fanout:
        commands.append(["cargo", "build", "--release"])
    if need_peer:
        commands.append(["cargo", "build", "--release", "--locked", "--manifest-path",
                         os.path.relpath(PEER_MANIFEST, REPO), "--target-dir", "target/peers"])
    for argv in commands:
        log("$ " + " ".join(argv))
        # stdout to stderr too: stdout carries only the JSON lines.
        done = subprocess.run(argv, cwd=REPO, stdout=sys.stderr, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"bench: `{' '.join(argv)}` failed ({done.returncode})")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark fanout against the axum + reqwest peer (see bench/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs and fewer connections: a smoke test under 2 minutes")
    parser.add_argument("--scenario", action="extend", nargs="+", choices=SCENARIO_NAMES, metavar="NAME",
                        help=f"scenarios to run, in this order (default all: "
                             f"{' '.join(SCENARIO_NAMES)})")
    parser.add_argument("--only", choices=IMPLEMENTATIONS,
                        help="measure only one implementation (no ratio lines)")
    parser.add_argument("--fanout-bin", type=Path,
                        help="use this fanout binary (server and simulator) instead of building "
                             "target/release/fanout")
    parser.add_argument("--fanout-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for the fanout server, e.g. --fanout-arg=--upstream-linger-ms=0 "
                             "(repeatable)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the binaries already built instead of running cargo")
    return parser.parse_args(argv)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, through every `finally`. SIGINT is set too:
    # a shell starts background jobs with it ignored, and then Python would not raise on it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    impls = [args.only] if args.only else list(IMPLEMENTATIONS)
    scenarios = [s for name in (args.scenario or SCENARIO_NAMES)
                 for s in SCENARIOS if s.name == name]
    if not args.no_build:
        build(skip_fanout=args.fanout_bin is not None, need_peer="peer" in impls)
    wrk = subprocess.run(["sh", "-c", "command -v wrk"], capture_output=True, text=True).stdout
    settings = Settings(
        quick=args.quick,
        fanout_bin=(args.fanout_bin or FANOUT_BIN).resolve(),
        peer_bin=PEER_BIN,
        wrk=wrk.strip(),
        settle_s=2.0 if args.quick else 3.0,
        fanout_args=tuple(args.fanout_arg),
    )
    for binary in [settings.fanout_bin] + ([settings.peer_bin] if "peer" in impls else []):
        if not binary.is_file():
            raise SystemExit(f"bench: {binary} is missing (build it, or drop --no-build)")
    if not settings.wrk:
        raise SystemExit("bench: wrk is not installed")

    results, comparisons, failed = [], [], 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        for index, scenario in enumerate(scenarios):
            # Alternate which implementation goes first, so neither always runs on a machine
            # still warm (or still busy) from the other.
            order = impls if index % 2 == 0 else impls[::-1]
            by_impl = {}
            for impl in order:
                try:
                    result = run_one(scenario, impl, settings, Path(tmp))
                except BenchError as e:
                    failed += 1
                    result = {"scenario": scenario.name, "implementation": impl,
                              "endpoint": scenario.endpoint, "error": str(e)}
                    log(f"{scenario.name}/{impl}: FAILED: {e}")
                results.append(result)
                by_impl[impl] = result
                print(json.dumps(result), flush=True)
            fanout, peer = by_impl.get("fanout"), by_impl.get("peer")
            if fanout and peer and "error" not in fanout and "error" not in peer:
                comparison = ratios(scenario.name, fanout, peer)
                comparisons.append(comparison)
                print(json.dumps(comparison), flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    print(summary_table(results, comparisons), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        sys.exit(130)
