"""Lint the flow's own code as it runs in staging: the Metaflow code package, unpacked and checked
with `python <flow file> check` (graph lint + pylint errors-only).

Both unpacking (a crafted tarball is itself an attack: link chains past tarfile's filter, bombs)
and importing the flow file handle staging data, so under `promotion.lint_isolation: namespaces`
(the default) both run in the sandbox of `isolation.py`: no network, none of our processes or
files, an allow-listed environment, an unprivileged uid and resource limits. The run process
only writes the tarball's bytes to a file. A host that cannot build that sandbox fails the check
(fail closed). `none` runs the same steps as a plain subprocess of this process (scrubbed
environment only: same user, same network, same files), and says so in the result. Either way,
what the check printed is redacted before it is returned.

The lint is a quality gate, not a security control: its verdict is the exit code, which the
code decides.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

from platform_ops.promotion.core import CheckResult
from platform_ops.promotion.isolation import DATA_DIR, IsolationUnavailable, Limits, probe, run, run_unisolated
from platform_ops.redaction import redact

OUTPUT_TAIL = 1500
UNSAFE_NOTE = "(lint_isolation: none, UNSAFE: the staging code ran as platform-ops' user, on its network)"
REFUSED = 97  # the unpacker's exit code: the package itself is unacceptable
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 64 << 20

# Runs first, before any staging code, where the check will run: unpacks regular files and
# directories only (no links of any kind: that closes tarfile filter bypasses like
# CVE-2025-4517 on an unpatched Python), bounded, then replaces itself with the check.
UNPACK_AND_CHECK = f"""
import os, sys, tarfile
script, package, dest = sys.argv[1:4]
def refuse(why):
    print("platform-ops: " + why, file=sys.stderr)
    sys.exit({REFUSED})
try:
    with tarfile.open(package, "r:*") as tar:
        members = []
        for member in tar:
            if len(members) >= {MAX_MEMBERS}:
                refuse("the code package has more than {MAX_MEMBERS} entries")
            if not (member.isfile() or member.isdir()):
                refuse(f"the code package holds {{member.name!r}}, which is neither a file nor a directory")
            members.append(member)
        if sum(m.size for m in members) > {MAX_UNPACKED_BYTES}:
            refuse("the code package unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB")
        tar.extractall(dest, members=members, filter="data")
except (tarfile.TarError, OSError, EOFError) as exc:
    refuse(f"the code package is not a readable tarball: {{exc}}")
if not os.path.isfile(os.path.join(dest, script)):
    refuse(f"the code package has no {{script}}")
os.closerange(3, 1024)  # nothing inherited reaches the check (bwrap's namespace fd among them)
os.chdir(dest)
os.execv(sys.executable, [sys.executable, script, "check"])
"""


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
    if isolation not in ("namespaces", "none"):
        raise ValueError(f"lint isolation {isolation!r}: expected 'namespaces' or 'none'")
    if not script or "/" in script or not script.endswith(".py"):
        return CheckResult(name, False,
                           f"the deployment names no flow file to check (METAFLOW_VERSION script={script!r})")
    if isolation == "namespaces" and (reason := probe()):
        return cannot_isolate(reason)
    limits = Limits(wall_seconds=timeout_seconds, cpu_seconds=timeout_seconds)
    with tempfile.TemporaryDirectory(prefix="platform-ops-lint-") as data:
        os.chmod(data, 0o755)  # the sandboxed unpacker runs as nobody
        with open(os.path.join(data, "package.tar"), "wb") as f:
            f.write(blob)
        os.chmod(f.name, 0o644)
        try:
            if isolation == "namespaces":
                dest = "/tmp/code"
                outcome = run(_argv(script, f"{DATA_DIR}/package.tar", dest), data, check_env("/tmp", dest), limits)
            else:
                home = os.path.join(data, "home")
                dest = os.path.join(data, "code")
                os.mkdir(home)
                outcome = run_unisolated(_argv(script, f.name, dest), data, check_env(home, dest), limits)
        except IsolationUnavailable as exc:
            return cannot_isolate(str(exc))
    output = redact(outcome.output).strip().replace(dest + "/", "")  # redact all of it, then cut
    note = f" {UNSAFE_NOTE}" if isolation == "none" else ""
    refused = output.splitlines()[-1] if output else ""
    if outcome.exit_code == REFUSED and refused.startswith("platform-ops: "):
        return CheckResult(name, False, refused.removeprefix("platform-ops: ") + note)
    if outcome.cut_off:
        return CheckResult(name, False, f"`python {script} check` {outcome.cut_off}{note}: {output[-OUTPUT_TAIL:]}")
    if outcome.exit_code != 0:
        return CheckResult(name, False, f"`python {script} check` failed (exit {outcome.exit_code}){note}: "
                                        f"{output[-OUTPUT_TAIL:]}")
    return CheckResult(name, True, f"`python {script} check`{note}: " + " ".join(
        line.strip() for line in output.splitlines() if "good" in line or "happy" in line)[:300])


def _argv(script: str, package: str, dest: str) -> list[str]:
    return [sys.executable, "-I", "-c", UNPACK_AND_CHECK, script, package, dest]
