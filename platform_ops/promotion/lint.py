"""Lint the flow's own code as it runs in staging: the Metaflow code package, extracted into a
temporary directory and checked with `python <flow file> check` (graph lint + pylint errors-only).

Importing the flow file runs staging code, so under `promotion.lint_isolation: namespaces` (the
default) the check runs in the sandbox of `isolation.py`: no network, none of our processes or
files, an allow-listed environment, an unprivileged uid and resource limits. A host that cannot
build that sandbox fails the check (fail closed). `none` runs it as a plain subprocess of this
process (scrubbed environment only: same user, same network, same files), and says so in the
result. Either way, what the check printed is redacted before it is returned.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from platform_ops.promotion.core import CheckResult
from platform_ops.promotion.isolation import CODE_DIR, IsolationUnavailable, Limits, probe, run, run_unisolated
from platform_ops.redaction import redact

OUTPUT_TAIL = 1500
UNSAFE_NOTE = "(lint_isolation: none, UNSAFE: the staging code ran as platform-ops' user, on its network)"


def package_sha(blob: bytes) -> str:
    """Metaflow stores code packages content-addressed by the SHA-1 of the tarball."""
    return hashlib.sha1(blob).hexdigest()


def check_env(home: str, code_dir: str) -> dict[str, str]:
    """All the environment the check gets: Metaflow pointed at a local, throwaway datastore."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "METAFLOW_HOME": home, "LANG": "C.UTF-8",
            "USERNAME": "platform-ops", "PYTHONPATH": code_dir, "PYTHONDONTWRITEBYTECODE": "1",
            "METAFLOW_DEFAULT_METADATA": "local", "METAFLOW_DEFAULT_DATASTORE": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": home}


def cannot_isolate(reason: str) -> CheckResult:
    return CheckResult("lint", False, f"cannot isolate the lint on this host: {reason}. The lint runs staging code, "
                                      "which must never run with platform-ops' credentials in reach: run promotions "
                                      "where user namespaces work (README: Deploying to AWS), or set "
                                      "promotion.lint_isolation: none (unsafe, recorded in the audit record)")


def lint_package(blob: bytes, script: str, timeout_seconds: int, isolation: str = "namespaces") -> CheckResult:
    name = "lint"
    if not script or "/" in script or not script.endswith(".py"):
        return CheckResult(name, False, f"the deployment names no flow file to check (METAFLOW_VERSION script={script!r})")
    if isolation == "namespaces" and (reason := probe()):
        return cannot_isolate(reason)
    limits = Limits(wall_seconds=timeout_seconds, cpu_seconds=timeout_seconds)
    with tempfile.TemporaryDirectory(prefix="platform-ops-lint-") as workdir:
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                tar.extractall(workdir, filter="data")  # no absolute paths, no escapes, no devices
        except (tarfile.TarError, OSError) as exc:
            return CheckResult(name, False, f"the code package is not a readable tarball: {exc}")
        if not (Path(workdir) / script).is_file():
            return CheckResult(name, False, f"the code package has no {script}")
        _readable_by_all(workdir)  # the sandboxed check runs as nobody
        try:
            if isolation == "namespaces":
                outcome = run([sys.executable, script, "check"], workdir, check_env("/tmp", CODE_DIR), limits)
            else:
                with tempfile.TemporaryDirectory(prefix="platform-ops-lint-home-") as home:
                    outcome = run_unisolated([sys.executable, script, "check"], workdir, check_env(home, workdir),
                                             limits)
        except IsolationUnavailable as exc:
            return cannot_isolate(str(exc))
        output = redact(outcome.output.strip().replace(workdir + "/", "").replace(CODE_DIR + "/", ""))
    note = f" {UNSAFE_NOTE}" if isolation == "none" else ""
    if outcome.cut_off:
        return CheckResult(name, False, f"`python {script} check` {outcome.cut_off}{note}: {output[-OUTPUT_TAIL:]}")
    if outcome.exit_code != 0:
        return CheckResult(name, False, f"`python {script} check` failed (exit {outcome.exit_code}){note}: "
                                        f"{output[-OUTPUT_TAIL:]}")
    return CheckResult(name, True, f"`python {script} check`{note}: " + " ".join(
        line.strip() for line in output.splitlines() if "good" in line or "happy" in line)[:300])


def _readable_by_all(root: str) -> None:
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o755)
        for f in files:
            os.chmod(os.path.join(directory, f), 0o644)
