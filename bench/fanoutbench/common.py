"""What every module of the bench shares: where things are, the error that fails one run, the progress log.

A leaf: it imports nothing of the package, so any module can use it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent


class BenchError(Exception):
    """A run that could not be measured (a process died, a check failed); the message says why."""


def log(message: str) -> None:
    """Progress for people, on stderr: stdout carries only the JSON lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
