"""Defense in depth for processes that hold secrets (stdlib only).

A process of the same uid can read another's exec-time environment (`/proc/<pid>/environ`,
where the Slack token and AWS keys sit) and memory, unless that process is non-dumpable. The
code location makes itself so when it loads, which covers the code server and every run worker
that imports it. Root can still read it (ptrace capability): isolation, not this, keeps
staging code away from root (promotion/isolation.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def make_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0) on Linux; True when the process is now non-dumpable."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
