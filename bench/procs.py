"""What bench/soak.py and bench/restart.py share: child processes that always stop, free ports,
fanout's /metrics, and the /proc figures of a running process.

Python 3.11 standard library. Every child runs in its own session (a Ctrl-C in the terminal reaches
only the script), dies with the script (PR_SET_PDEATHSIG), and is stopped by its pid when the
`Processes` block is left, whatever happens: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FANOUT_BIN = REPO / "target" / "release" / "fanout"

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """Runs in each child before exec: die with the script, and allow many open files."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Processes:
    """Every process a script starts; leaving the `with` stops those still running, by pid."""

    GRACE_S = 5.0

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[subprocess.Popen] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        # Ctrl-C is ignored while stopping, so it cannot leave half of them running.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in self.started:
                self.stop(proc)
        finally:
            signal.signal(signal.SIGINT, previous)

    def start(self, name: str, argv: list[str], stdout=None) -> subprocess.Popen:
        """Starts `argv`; its output goes to LOGDIR/NAME.log, or to `stdout` if given (a pipe, say)."""
        log = self.log(name)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=out if stdout is None else stdout,
                                    stderr=out, preexec_fn=_child_setup,
                                    start_new_session=True)
        proc.name = name  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def log(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def stop(self, proc: subprocess.Popen, grace_s: float = GRACE_S,
             sig: int | None = signal.SIGTERM) -> int:
        """Sends `sig` (none: it ends by itself) unless it has exited, waits `grace_s`, then
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


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; a tiny race is accepted)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(proc: subprocess.Popen, port: int, limit_s: float = 20.0) -> None:
    """Waits until `port` accepts TCP connections; fails if `proc` exits first or time runs out."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.name} exited with {proc.returncode} before accepting")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"{proc.name} did not accept on port {port} within {limit_s} s")


def find_tool(name: str, install: str) -> str:
    """A tool on PATH or where `cargo install` puts it; exits saying how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path.home() / ".cargo" / "bin"))
    if not found:
        raise SystemExit(f"{name} is not installed. Install it with\n    {install}")
    return found


def build(fanout_bin: Path) -> None:
    """`cargo build --release` when the binary is the repository's own."""
    if fanout_bin == FANOUT_BIN:
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=REPO,
                       check=True)


def start_simulator(procs: Processes, fanout_bin: Path, *flags: str) -> tuple[str, Path]:
    """`fanout simulator` on a free port, over TLS: its URL and its CA's file, for fanout."""
    port, ca = free_port(), procs.logdir / "sim-ca.pem"
    sim = procs.start("simulator", [str(fanout_bin), "simulator", "--listen",
                                    f"127.0.0.1:{port}", "--write-ca", str(ca), *flags])
    wait_accepting(sim, port)
    return f"https://localhost:{port}/api/work", ca


def fanout_argv(fanout_bin: Path, upstream: tuple[str, Path], port: int, admin: int,
                *flags: str) -> list[str]:
    url, ca = upstream
    return [str(fanout_bin), "--listen", f"127.0.0.1:{port}", "--admin-listen",
            f"127.0.0.1:{admin}", "--upstream", url, "--upstream-ca", str(ca), *flags]


# fanout's GET /metrics: `name{labels} value` lines.
_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$", re.M)


def scrape(admin_port: int) -> dict[str, float]:
    """Every sample of fanout's /metrics, keyed `name` or `name{labels}` as written."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {name + (labels or ""): float(v) for name, labels, v in _SAMPLE.findall(body)}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmRSS:"))
    return int(kib) * 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def git_commit() -> str:
    """The commit the work tree is at, `-dirty` when it has changes (for charts and reports)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
