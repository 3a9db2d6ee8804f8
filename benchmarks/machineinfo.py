"""The machine a benchmark ran on, for its report: read from /proc and the standard library.

Every benchmark prints :func:`machine_info` beside its numbers, because the numbers mean
nothing without the machine (and its load: this project's machines are often shared).
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "?"


def _meminfo_gib(field: str) -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info(**versions: str) -> dict[str, Any]:
    """Cores, CPU model, RAM (total and available), load average, Python, date, and ``versions``.

    Args:
        **versions: Library versions to record, e.g. ``torch=torch.__version__``.
    """
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gib": _meminfo_gib("MemTotal"),
        "ram_available_gib": _meminfo_gib("MemAvailable"),
        "load_avg": load,
        "python": platform.python_version(),
        **versions,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def machine_line(**versions: str) -> str:
    """:func:`machine_info` as one line: ``key value, key value, ...``."""
    return ", ".join(f"{k} {v}" for k, v in machine_info(**versions).items())
