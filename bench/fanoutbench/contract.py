"""The single check request before the load: does the server answer as the contract says?

An allowed status, the body shape of the contract (`[{"time": N}, ...]`, `{"time": N}` for the
endpoints that answer one object, or an object with `error`), and upstream requests seen by the
simulator. A server that fails it is not measured.
"""

from __future__ import annotations

import http.client
import json
import time

from .common import BenchError
from .scenarios import Scenario
from .simulator import SimStats


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
