"""A throwaway PostgreSQL server on 127.0.0.1 for the tests that exercise production's Dagster
storage: Debian's PostgreSQL binaries (.ci/run installs them), a fresh cluster in a temporary
directory, trust auth on loopback only, stopped at the end."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from platform_ops.sandbox.server import free_port


def binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


@contextmanager
def server() -> Iterator[str]:
    """Yields a postgresql:// URL."""
    bin_dir = binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = tempfile.mkdtemp(prefix="platform-ops-pg-")
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, timeout=120)

    try:
        run(f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "platform_ops")
        run(f"{bin_dir}/pg_ctl", "-D", data, "-w", "-l", f"{data}/server.log",
            "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start")
        yield f"postgresql://platform_ops@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(data, ignore_errors=True)
