"""The simulated upstream (`fanout simulator`, over TLS): its command line, and its GET /stats.

bench/README.md, "The simulator's /stats", says what the counts are.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

from .common import BenchError
from .scenarios import Scenario


def simulator_argv(fanout_bin: Path, port: int, scenario: Scenario, ca: Path) -> list[str]:
    """`fanout simulator` on `port` with the scenario's latency and failures; it writes its test CA
    to `ca`, which the servers then trust."""
    argv = [str(fanout_bin), "simulator", "--listen", f"127.0.0.1:{port}",
            "--latency-ms", scenario.latency_ms, "--write-ca", str(ca)]
    if scenario.failure_rate:
        argv += ["--failure-rate", str(scenario.failure_rate), "--failures", scenario.failures]
    return argv


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
                    # Requests received and not yet answered (None from a simulator before it).
                    "in_flight": stats.get("in_flight"),
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
