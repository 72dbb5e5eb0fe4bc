"""Where the machine's CPU goes during a measured window: the cores each kind of process used
(workers, API, Redis, S3, the bench's own clients), from ``/proc`` (Linux; elsewhere, nothing)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

#: Clock ticks a second, the unit of the CPU times in ``/proc/<pid>/stat``.
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float, float] | None:
    """Return (parent pid, own CPU seconds, reaped children's CPU seconds) of ``pid``, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return int(fields[1]), (utime + stime) / _TICKS, (cutime + cstime) / _TICKS


def cpu_seconds(groups: dict[str, list[int]], own: str = "bench") -> dict[str, float] | None:
    """Return the CPU seconds each group of processes has used so far, each process with all its
    descendants; group ``own`` is this process alone (everything else descends from it). None
    where ``/proc`` is missing."""
    if not Path("/proc/self/stat").exists():
        return None
    stats = {
        int(entry.name): _stat(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()
    }
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)

    def subtree(pid: int) -> float:
        stat = stats.get(pid)
        if stat is None:
            return 0.0
        return stat[1] + stat[2] + sum(subtree(child) for child in children.get(pid, []))

    used = {name: sum(subtree(pid) for pid in pids) for name, pids in groups.items()}
    mine = stats.get(os.getpid())
    used[own] = mine[1] if mine else 0.0
    return used


class CpuWindow:
    """Takes ``cpu_seconds`` at ``start_s`` and at ``start_s + seconds`` from now, on a thread;
    ``cores()`` then says how many cores each group used over that window."""

    def __init__(self, groups: dict[str, list[int]], start_s: float, seconds: float) -> None:
        self.groups, self.seconds = groups, seconds
        self.snapshots: list[dict[str, float] | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start_s,), name="cpu-window", daemon=True)
        self._thread.start()

    def _run(self, start_s: float) -> None:
        for wait_s in (start_s, self.seconds):
            if self._stop.wait(wait_s):
                return
            self.snapshots.append(cpu_seconds(self.groups))

    def cores(self) -> dict[str, float] | None:
        """Return the cores each group used over the window (and their total), or None if the window
        was not completed or ``/proc`` is missing."""
        self._stop.set()
        self._thread.join()
        if len(self.snapshots) != 2 or None in self.snapshots:
            return None
        before, after = self.snapshots
        assert before is not None and after is not None
        used = {name: round((after[name] - before[name]) / self.seconds, 2) for name in after}
        used["total"] = round(sum(used.values()), 2)
        return used
