"""A process that holds secrets is non-dumpable: another process of the same uid cannot read its
environment. Run as `nobody` with Debian's Python, because root may read any process anyway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from platform_ops.hardening import make_non_dumpable
if sys.argv[1] == "harden":
    assert make_non_dumpable()
print("ready", flush=True)
time.sleep(120)
"""
PEEK = "import sys; print(open(f'/proc/{sys.argv[1]}/environ').read())"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                                reason="needs root to run both sides as nobody, and /usr/bin/python3")


def as_nobody(*args: str) -> list[str]:
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", *args]


@pytest.fixture(scope="module")
def importable_by_nobody():
    """hardening.py (stdlib only) where nobody can import it: the checkout may sit in a 0700
    directory (a CI clone under mktemp -d)."""
    where = Path(tempfile.mkdtemp(prefix="platform-ops-hardening-"))
    (where / "platform_ops").mkdir()
    (where / "platform_ops" / "__init__.py").write_text("")
    shutil.copy(ROOT / "platform_ops" / "hardening.py", where / "platform_ops" / "hardening.py")
    for path in (where, where / "platform_ops", *(where / "platform_ops").iterdir()):
        path.chmod(0o755)
    yield where
    shutil.rmtree(where)


def environ_seen_by_a_peer(mode: str, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "SLACK_BOT_TOKEN": "xoxb-hardening-test-token"}
    holder = subprocess.Popen(as_nobody("-c", HOLDER, mode), env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        return subprocess.run(as_nobody("-c", PEEK, str(holder.pid)), capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"}, timeout=60)
    finally:
        holder.kill()
        holder.wait()


def test_a_same_uid_peer_reads_an_ordinary_process_environment(importable_by_nobody):
    """The contrast: without hardening the token is there for the taking."""
    peek = environ_seen_by_a_peer("plain", importable_by_nobody)
    assert "xoxb-hardening-test-token" in peek.stdout, peek.stderr


def test_a_non_dumpable_process_environment_is_refused_to_a_same_uid_peer(importable_by_nobody):
    peek = environ_seen_by_a_peer("harden", importable_by_nobody)
    assert peek.returncode != 0 and "PermissionError" in peek.stderr, (peek.stdout, peek.stderr)
    assert "xoxb-hardening-test-token" not in peek.stdout


def test_loading_the_code_location_makes_the_process_non_dumpable():
    code = ("import platform_ops.definitions, ctypes; "
            "print(ctypes.CDLL('libc.so.6').prctl(3, 0, 0, 0, 0))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore",
                               "PLATFORM_OPS_SETTINGS": str(ROOT / "platform_ops/sandbox/settings.yaml")})
    assert done.stdout.strip().splitlines()[-1] == "0", done.stderr[-2000:]
