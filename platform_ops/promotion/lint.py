"""Lint the flow's own code as it runs in staging: the Metaflow code package, extracted into a
temporary directory and checked with `python <flow file> check` (graph lint + pylint errors-only)
in a subprocess that sees none of platform-ops' credentials."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from platform_ops.promotion.core import CheckResult

OUTPUT_TAIL = 1500


def package_sha(blob: bytes) -> str:
    """Metaflow stores code packages content-addressed by the SHA-1 of the tarball."""
    return hashlib.sha1(blob).hexdigest()


def lint_package(blob: bytes, script: str, timeout_seconds: int) -> CheckResult:
    name = "lint"
    if not script or "/" in script or not script.endswith(".py"):
        return CheckResult(name, False, f"the deployment names no flow file to check (METAFLOW_VERSION script={script!r})")
    with tempfile.TemporaryDirectory(prefix="platform-ops-lint-") as workdir:
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                tar.extractall(workdir, filter="data")  # no absolute paths, no escapes, no devices
        except (tarfile.TarError, OSError) as exc:
            return CheckResult(name, False, f"the code package is not a readable tarball: {exc}")
        if not (Path(workdir) / script).is_file():
            return CheckResult(name, False, f"the code package has no {script}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "METAFLOW_HOME": workdir,
               "USERNAME": "platform-ops", "PYTHONPATH": workdir, "PYTHONDONTWRITEBYTECODE": "1",
               "METAFLOW_DEFAULT_METADATA": "local", "METAFLOW_DEFAULT_DATASTORE": "local"}
        try:
            done = subprocess.run([sys.executable, script, "check"], cwd=workdir, env=env, capture_output=True,
                                  text=True, timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            return CheckResult(name, False, f"`python {script} check` did not finish in {timeout_seconds} s")
        output = (done.stdout + done.stderr).strip().replace(workdir + "/", "")
    if done.returncode != 0:
        return CheckResult(name, False, f"`python {script} check` failed (exit {done.returncode}): "
                                        f"{output[-OUTPUT_TAIL:]}")
    return CheckResult(name, True, f"`python {script} check`: " + " ".join(
        line for line in output.splitlines() if "good" in line or "happy" in line)[:300])
