"""Starting and stopping the processes of a run, safely, and waiting on them with a bound.

Every process runs in its own session (so a Ctrl-C in the terminal reaches only the bench), dies with
the bench (PR_SET_PDEATHSIG), and is stopped by its pid when its `Processes` block ends, whatever
happens. Every wait here has a limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

from .common import BenchError, log

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: frozenset[int] | None) -> None:
    """Runs in each child before exec: die with this script, allow many open files, and (--pin)
    run only on `cpus`."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if cpus:
        os.sched_setaffinity(0, cpus)


def cpu_split(pin: bool) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """With --pin, the CPUs of the server under test (the last one, its own) and of everything else
    (the simulator, the load generator); (None, None) without, or on a machine with fewer than 2."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin:
        return None, None
    if len(cpus) < 2:
        log(f"--pin: this machine has {len(cpus)} CPU; nothing is pinned")
        return None, None
    return frozenset(cpus[-1:]), frozenset(cpus[:-1])


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

    def start(self, name: str, argv: list[str], env: dict | None = None,
              cpus: frozenset[int] | None = None, stdout: int | None = None) -> subprocess.Popen:
        """Starts `argv`, its output in LOGDIR/NAME.log; on `cpus` only, if given; with `stdout`
        (subprocess.PIPE, say), only its stderr goes to the log."""
        logfile = self.logdir / f"{name}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=subprocess.STDOUT if stdout is None else out,
                preexec_fn=lambda: _child_setup(cpus),
                start_new_session=True,
                env=env,
            )
        self.started.append((name, proc, logfile))
        return proc

    def logfile(self, proc: subprocess.Popen) -> Path | None:
        """Where `proc`'s output goes."""
        return next((logfile for _name, p, logfile in self.started if p is proc), None)

    def log_tail(self, proc: subprocess.Popen, lines: int = 15) -> str:
        for _name, p, logfile in self.started:
            if p is proc:
                try:
                    text = logfile.read_text(errors="replace").splitlines()
                except OSError:
                    return ""
                return "\n".join(text[-lines:])
        return ""

    def stop(self, proc: subprocess.Popen, grace_s: float = GRACE_S,
             sig: int | None = signal.SIGTERM) -> int:
        """Sends `sig` (None: none, it ends by itself) unless it has exited, waits `grace_s`, then
        SIGKILL; its exit status."""
        if sig is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            return proc.wait()

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


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def unwind_on_signals() -> None:
    """SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, through every `finally`, so every process started
    is stopped. SIGINT is set too: a shell starts background jobs with it ignored, and then Python
    would not raise on it."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


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


def wait_ready(procs: Processes, proc: subprocess.Popen, admin_port: int,
               limit_s: float = 90.0) -> None:
    """Waits until fanout's /readyz answers 200, as a load balancer would before sending it work (with
    --upstream-warm it says 503 while its upstream connections are opened)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"fanout exited with {proc.returncode} before it was ready:\n"
                             f"{procs.log_tail(proc)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.05)
    raise BenchError(f"fanout's /readyz did not answer 200 within {limit_s:g} s")


def wait_finished(procs: Processes, proc: subprocess.Popen, what: str, seconds: float) -> None:
    """Waits for a load generator run of `seconds` to end, at most 60 s more; it must succeed."""
    try:
        proc.wait(timeout=seconds + 60)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what} still ran {seconds + 60:g} s after it started") from e
    if proc.returncode != 0:
        raise BenchError(f"{what} exited with {proc.returncode}:\n{procs.log_tail(proc, 40)}")
