"""The server's (and the machine's) figures from /proc: CPU time, steal, memory, open files, threads.

Read by pid, so they work the same for fanout and the peer, which has no /metrics. A leaf.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB_PER_MIB = 1024  # /proc/PID/status gives VmRSS and VmHWM in kB


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


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
