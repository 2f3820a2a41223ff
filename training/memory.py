"""Peak memory of this process; standard library only, so the benchmarks' peer venv (no TF) imports it too."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb():
    """This process's peak resident set size in MB (VmHWM from /proc; getrusage elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # macOS reports bytes
