"""The operating system's own figures: RSS and CPU time of a process, machine load.

Everything is read from ``/proc`` (Linux), so the numbers are the kernel's, not
the measured program's opinion of itself.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS); 0 if the process is gone."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The highest RSS ``pid`` ever had (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def machine_busy_fraction(interval: float = 1.0) -> float:
    """How busy all CPUs were over ``interval`` seconds (0..1), from /proc/stat."""

    def sample() -> tuple[int, int]:
        parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts), idle

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _machine_ticks() -> tuple[int, int]:
    """(all, busy) CPU ticks of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts), sum(parts) - idle


@dataclass
class ProcessMeter:
    """CPU and memory of a set of named processes between two points in time, and how
    busy the whole machine was meanwhile (``machine``: % of one core, all processes)."""

    pids: dict[str, int]
    cpu0: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0
    ticks0: tuple[int, int] = (0, 0)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.cpu0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.ticks0 = _machine_ticks()

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: cpu_seconds used, cpu_percent (of one core), rss_mib now."""
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        total, busy = _machine_ticks()
        cpus = os.cpu_count() or 1
        share = (busy - self.ticks0[1]) / max(1, total - self.ticks0[0])
        out: dict[str, dict[str, float]] = {
            "machine": {"cpu_percent": round(100.0 * share * cpus, 1), "cpus": cpus}
        }
        for name, pid in self.pids.items():
            used = cpu_seconds(pid) - self.cpu0.get(name, 0.0)
            out[name] = {
                "cpu_seconds": round(used, 3),
                "cpu_percent": round(100.0 * used / elapsed, 1),
                "rss_mib": round(rss_bytes(pid) / 2**20, 1),
            }
        return out


class PeakSampler:
    """Samples the RSS of some processes every ``interval`` s in the background."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, int] = {name: rss_bytes(pid) for name, pid in pids.items()}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pid))
            await asyncio.sleep(self.interval)

    async def stop(self) -> dict[str, int]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak[name], rss_bytes(pid))
        return self.peak


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _command_version(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def machine_description() -> dict[str, Any]:
    """What the figures were measured on, including how loaded the machine already was."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": sys.version.split()[0],
        "open_files_limit": soft if soft == hard else f"{soft} (hard {hard})",
        "packages": {
            name: _version(name)
            for name in ("websockets", "uvloop", "grpcio", "protobuf", "sqlalchemy", "asyncpg")
        },
        "postgresql": _command_version(["psql", "--version"]),
        "redis": _command_version(["redis-server", "--version"]),
        "load_average_at_start": load_average(),
        "other_cpu_busy_at_start": round(machine_busy_fraction(1.0), 3),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()
