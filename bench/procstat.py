"""CPU time of processes: what holds on a noisy machine, where wall-clock figures do not.

A process's cost is its CPU time (utime + stime, every thread, the dead ones too) and that of
every process below it (a service that forks helpers pays for them), plus cutime + cstime from
/proc/<pid>/stat: what its children that already exited and were reaped spent. A child alive at
the first snapshot and gone at the second has moved into its parent's cutime, so it counts with
its first reading (see `used`).

utime + stime in /proc/<pid>/stat count in clock ticks (10 ms): 200 messages that cost 0.05 ms
each would read as 0 or 10 ms. The same time is read to the nanosecond from the process's CPU
clock (clock_gettime on the clock id of another process, as clock_getcpuclockid(3) builds it),
falling back to the ticks where that clock cannot be read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: cut after the last ")".
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    return stat.rpartition(")")[2].split()


def _process_clock(pid: int) -> int:
    """The clock id of `pid`'s CPU time, all its threads (Linux: MAKE_PROCESS_CPUCLOCK(pid,
    CPUCLOCK_SCHED))."""
    return ((~pid) << 3) | 2


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads, to the nanosecond where the kernel tells it) plus
    cutime + cstime (its reaped children), in seconds; None for a process that is gone."""
    fields = _fields(pid)
    if fields is None:
        return None
    try:
        own = time.clock_gettime(_process_clock(pid))
    except OSError:
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + (int(fields[13]) + int(fields[14])) / CLK_TCK


def own_cpu_seconds() -> float:
    """This process's CPU time (every thread), without its children."""
    return time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)


def descendants(roots: Iterable[int]) -> set[int]:
    """`roots` and every live process below them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _fields(int(entry.name))
        if fields is None or len(fields) < 2:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds per pid of each named process tree, and of the whole machine."""

    trees: dict[str, dict[int, float]]
    machine_busy_s: float


def machine_busy_seconds() -> float:
    """CPU time every core spent busy (or stolen by the hypervisor), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def snapshot(roots: Mapping[str, int]) -> Snapshot:
    """The CPU time so far of each named process tree (`name -> root pid`)."""
    trees: dict[str, dict[int, float]] = {}
    for name, root in roots.items():
        readings = {pid: cpu_seconds(pid) for pid in descendants([root])}
        trees[name] = {pid: spent for pid, spent in readings.items() if spent is not None}
    return Snapshot(trees, machine_busy_seconds())


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each named tree spent between two snapshots. A tree missing from `after`
    (its process exited) counts as nothing spent; so does a pid that was replaced (a restart)."""
    spent: dict[str, float] = {}
    for name, then in before.trees.items():
        now = after.trees.get(name)
        if now is None:
            spent[name] = 0.0
            continue
        total = sum(now.values()) + sum(reading for pid, reading in then.items() if pid not in now)
        spent[name] = max(total - sum(then.values()), 0.0)
    return spent


def cores_busy(before: Snapshot, after: Snapshot) -> float:
    """CPU seconds the whole machine was busy between the snapshots."""
    return after.machine_busy_s - before.machine_busy_s
