"""What bench/soak.py and bench/restart.py share beyond the fanoutbench package (which starts and
stops their processes, reads /proc and scrapes /metrics for them): tools found or named, a
`fanout simulator` of their own, and fanout in front of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fanoutbench.processes import Processes, free_port, wait_accepting
from fanoutbench.servers import fanout_argv


def find_tool(name: str, install: str) -> str:
    """A tool on PATH or where `cargo install` puts it; exits saying how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path.home() / ".cargo" / "bin"))
    if not found:
        raise SystemExit(f"{name} is not installed. Install it with\n    {install}")
    return found


def start_simulator(procs: Processes, fanout_bin: Path, *flags: str) -> tuple[int, Path]:
    """`fanout simulator` on a free port, over TLS, with `flags`: its port and its CA's file."""
    port, ca = free_port(), procs.logdir / "sim-ca.pem"
    sim = procs.start("simulator", [str(fanout_bin), "simulator", "--listen",
                                    f"127.0.0.1:{port}", "--write-ca", str(ca), *flags])
    wait_accepting(procs, sim, "the simulator", port, also=ca)
    return port, ca


def start_fanout(procs: Processes, name: str, fanout_bin: Path, upstream: tuple[int, Path],
                 port: int, admin: int, *flags: str, stdout: int | None = None):
    """fanout on `port` (admin listener on `admin`) in front of the simulator, once it accepts."""
    sim_port, ca = upstream
    proc = procs.start(name, fanout_argv(fanout_bin, flags, port, sim_port, ca, admin),
                       stdout=stdout)
    wait_accepting(procs, proc, name, port)
    wait_accepting(procs, proc, name, admin)
    return proc
