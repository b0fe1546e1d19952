"""The two servers under test, fanout and the conventional axum + reqwest peer: building them with
cargo, and the command line each is started with.

The peer is built from ../shared/peers/axum-reqwest into target/peers, beside fanout's own target.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .common import REPO, log

IMPLEMENTATIONS = ("fanout", "peer")
PEER_MANIFEST = REPO.parent / "shared" / "peers" / "axum-reqwest" / "Cargo.toml"
FANOUT_BIN = REPO / "target" / "release" / "fanout"
PEER_BIN = REPO / "target" / "peers" / "release" / "peer-axum"


def build(skip_fanout: bool, need_peer: bool) -> None:
    if not skip_fanout:
        cargo_build()
    if need_peer:
        cargo_build("--locked", "--manifest-path", os.path.relpath(PEER_MANIFEST, REPO),
                    "--target-dir", "target/peers")


def cargo_build(*args: str, hint: str = "") -> None:
    """`cargo build --release ARGS` in the repository; exits saying what failed, and `hint`."""
    argv = ["cargo", "build", "--release", *args]
    log("$ " + " ".join(argv))
    # stdout to stderr too: stdout carries only the JSON lines.
    done = subprocess.run(argv, cwd=REPO, stdout=sys.stderr, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"bench: `{' '.join(argv)}` failed ({done.returncode}){hint}")


def fanout_argv(fanout_bin: Path, fanout_args: tuple[str, ...], port: int, sim_port: int,
                ca: Path, admin_port: int | None) -> list[str]:
    # The admin listener on a free loopback port (its default, 0.0.0.0:8081, may be taken);
    # a --fanout-arg=--admin-listen=... given by hand comes later and wins.
    return [str(fanout_bin), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"https://localhost:{sim_port}/api/work", "--upstream-ca", str(ca),
            "--admin-listen", f"127.0.0.1:{admin_port}", *fanout_args]


def peer_argv(peer_bin: Path, port: int, sim_port: int, ca: Path) -> list[str]:
    return [str(peer_bin), "--listen", f"127.0.0.1:{port}",
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
