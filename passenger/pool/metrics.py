"""What the operating system says about an app process (through psutil)."""

from __future__ import annotations

import psutil


class ProcessMemory:
    """Resident memory of a process, read from /proc by psutil (a few microseconds, no blocking)."""

    def rss(self, pid: int) -> int | None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.Error, OSError):
            return None
