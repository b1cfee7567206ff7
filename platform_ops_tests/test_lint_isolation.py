"""Hostile staging code meets the promotion lint: every attempt fails or is cut off, the check
reports a clean failure, nothing secret comes back, the run process is unharmed.

The lint runs in a child process started with secrets in its environment, as the ECS run
launcher starts a run, so /proc/<pid>/environ of the process that holds them is a real target.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from platform_ops.promotion import isolation
from platform_ops.promotion.lint import lint_package
from platform_ops.redaction import REDACTED
from platform_ops.sandbox import flows

SECRET_TOKEN = "xoxb-11111111-planted-slack-token-for-the-lint-test"
SECRET_KEY = "planted/secret/AccessKey+for+the+lint+test0"
GOOD_SOURCE = (flows.HERE / flows.FLOW_FILE).read_text()
RUNNER = """
import io, json, os, sys, tarfile
from platform_ops.promotion import isolation
from platform_ops.promotion.lint import lint_package
source = open(sys.argv[1]).read().replace("__RUN_PID__", str(os.getpid())).encode()
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w:gz") as tar:
    info = tarfile.TarInfo("demoflow.py")
    info.size = len(source)
    tar.addfile(info, io.BytesIO(source))
result = lint_package(raw.getvalue(), "demoflow.py", int(sys.argv[2]), isolation=sys.argv[3])
print(json.dumps({"passed": result.passed, "detail": result.detail, "pid": os.getpid()}))
"""


def package(source: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("demoflow.py")
        info.size = len(source.encode())
        tar.addfile(info, io.BytesIO(source.encode()))
    return raw.getvalue()


def hostile(body: str) -> str:
    """A flow file that attacks at import time (as `check` imports it), then exits non-zero."""
    return "import os, socket, sys, time\n" + textwrap.dedent(body) + "\nsys.exit(3)\n"


def lint_in_a_run_process(tmp_path: Path, source: str, timeout: int = 120, isolation: str = "namespaces",
                          wrap: list[str] | None = None) -> dict:
    """lint_package in a fresh process whose exec-time environment holds the secrets; a planted
    ~/.aws/credentials too."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True, exist_ok=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET_KEY}\n")
    flow_file = tmp_path / "demoflow.py"
    flow_file.write_text(source)  # __RUN_PID__ becomes the run process's pid
    env = {**os.environ, "HOME": str(home), "SLACK_BOT_TOKEN": SECRET_TOKEN, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    proc = subprocess.run([*(wrap or []), sys.executable, "-c", RUNNER, str(flow_file), str(timeout), isolation],
                          env=env, capture_output=True, text=True, timeout=timeout + 300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the run process itself is unharmed
    return json.loads(proc.stdout.strip().splitlines()[-1])


READS = """
def attempt(name, fn):
    try:
        print(f"LEAKED {name}: {fn()!r}"[:120])
    except Exception as exc:
        print(f"BLOCKED {name}: {type(exc).__name__}")

attempt("run process environ", lambda: open(f"/proc/{RUN_PID}/environ").read())
attempt("parent environ", lambda: open(f"/proc/{os.getppid()}/environ").read())
attempt("init environ", lambda: open("/proc/1/environ").read())
attempt("aws credentials", lambda: open(CREDENTIALS).read())
attempt("home aws credentials", lambda: open(os.path.expanduser("~/.aws/credentials")).read())
attempt("aws endpoint", lambda: socket.create_connection(ENDPOINT, timeout=5).getpeername())
attempt("instance metadata", lambda: socket.create_connection(("169.254.169.254", 80), timeout=5).getpeername())
attempt("task credentials", lambda: socket.create_connection(("169.254.170.2", 80), timeout=5).getpeername())


def host_processes():
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    if len(pids) > 3:  # bwrap's init, the check, and what it started
        return pids
    raise LookupError(f"only {len(pids)} processes")


def nested_user_namespace():
    import ctypes
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER: every capability inside it, mounts included
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "a user namespace of its own"


attempt("host processes", host_processes)
attempt("nested user namespace", nested_user_namespace)
"""


def reads_source(sandbox, tmp_path: Path) -> str:
    port = int(sandbox.endpoint.rsplit(":", 1)[1])
    prelude = (f"ENDPOINT = ('127.0.0.1', {port})\nCREDENTIALS = {str(tmp_path / 'home/.aws/credentials')!r}\n"
               "RUN_PID = __RUN_PID__\n")
    return hostile(prelude + READS)


def attempts(detail: str) -> dict[str, str]:
    """{attempt: "LEAKED" | "BLOCKED"} from what the hostile code printed."""
    return {m[2]: m[1] for m in re.finditer(r"\b(LEAKED|BLOCKED) ([a-z ]+):", detail)}


def test_reads_and_connections_are_all_blocked(sandbox, tmp_path):
    result = lint_in_a_run_process(tmp_path, reads_source(sandbox, tmp_path))
    assert not result["passed"] and "failed (exit 3)" in result["detail"], result["detail"]
    seen = attempts(result["detail"])
    assert set(seen) == {"run process environ", "parent environ", "init environ", "aws credentials",
                         "home aws credentials", "aws endpoint", "instance metadata", "task credentials",
                         "host processes", "nested user namespace"}, result["detail"]
    assert set(seen.values()) == {"BLOCKED"}, result["detail"]
    assert SECRET_TOKEN not in result["detail"] and SECRET_KEY not in result["detail"]


def test_without_isolation_the_same_code_reaches_the_endpoint_and_redaction_is_the_last_line(sandbox, tmp_path):
    """The contrast that shows the test above can fail: `none` reaches the network and the files;
    what it stole is redacted before anything is returned (and the result says it was unsafe)."""
    result = lint_in_a_run_process(tmp_path, reads_source(sandbox, tmp_path), isolation="none")
    seen = attempts(result["detail"])
    assert seen["aws endpoint"] == "LEAKED" and seen["aws credentials"] == "LEAKED", result["detail"]
    assert seen["run process environ"] == "LEAKED" and seen["host processes"] == "LEAKED", result["detail"]
    assert "UNSAFE" in result["detail"] and REDACTED in result["detail"]
    assert SECRET_TOKEN not in result["detail"] and SECRET_KEY not in result["detail"]


def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind(tmp_path):
    result = lint_in_a_run_process(tmp_path, hostile("""
        forked = 0
        try:
            for _ in range(2000):
                if os.fork() == 0:
                    time.sleep(600)
                    os._exit(0)
                forked += 1
        except OSError as exc:
            print(f"FORKS STOPPED at {forked}: {type(exc).__name__}")
        """))
    assert not result["passed"], result["detail"]
    stopped = [line for line in result["detail"].splitlines() if "FORKS STOPPED at" in line]
    assert stopped and int(stopped[0].split("at ")[1].split(":")[0]) < 2000, result["detail"]
    # The namespace died with the check: no sleeping child of the bomb survives it.
    assert wait_for(lambda: not processes_of(65534)), processes_of(65534)


def test_a_huge_file_and_endless_output_are_cut_off(tmp_path):
    big = lint_in_a_run_process(tmp_path, hostile("""
        with open("/tmp/huge", "wb") as f:
            for _ in range(4096):
                f.write(b"x" * (1 << 20))
        print("WROTE 4 GiB")
        """))
    # RLIMIT_FSIZE: Python ignores SIGXFSZ, so the write fails with EFBIG and the check exits
    assert not big["passed"] and "File too large" in big["detail"] and "WROTE" not in big["detail"], big["detail"]
    endless = lint_in_a_run_process(tmp_path, hostile("""
        while True:
            sys.stdout.write("y" * 4096)
        """))
    assert not endless["passed"] and "wrote more than 32 MiB of output" in endless["detail"], endless["detail"][:300]
    assert len(endless["detail"]) < 2000  # only the tail comes back


def test_memory_is_capped(tmp_path):
    result = lint_in_a_run_process(tmp_path, hostile("""
        try:
            hog = bytearray(8 << 30)
            print("ALLOCATED 8 GiB")
        except MemoryError:
            print("MEMORY REFUSED")
        """))
    assert not result["passed"] and "MEMORY REFUSED" in result["detail"], result["detail"]


def test_code_that_never_ends_is_stopped_at_the_deadline(tmp_path):
    result = lint_in_a_run_process(tmp_path, hostile("time.sleep(10 ** 6)"), timeout=10)
    assert not result["passed"] and "did not finish in 10 s" in result["detail"], result["detail"]
    assert wait_for(lambda: not processes_of(65534)), processes_of(65534)


def tarball(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, mode: str = "w:gz") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode=mode) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO((data or {}).get(info.name, b"")))
    return raw.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def test_a_crafted_tarball_is_unpacked_in_the_sandbox_and_links_are_refused(tmp_path):
    """Links are how tarfile's `data` filter is bypassed (CVE-2025-4517): none is unpacked, and
    unpacking happens inside the sandbox anyway, as nobody, into its own tmpfs."""
    target = tmp_path / "written-by-the-package"
    for link in (member("a", tarfile.SYMTYPE, link=str(tmp_path)), member("b", tarfile.LNKTYPE, link="demoflow.py")):
        payload = GOOD_SOURCE.encode()
        result = lint_package(tarball([member("demoflow.py", size=len(payload)), link,
                                       member(f"{link.name}/written-by-the-package", size=1)],
                                      {"demoflow.py": payload, f"{link.name}/written-by-the-package": b"x"}),
                              "demoflow.py", 60)
        assert not result.passed and result.detail == (f"the code package holds {link.name!r}, which is neither a "
                                                       "file nor a directory"), result.detail
    assert not target.exists()


def test_tar_bombs_are_refused_before_they_are_unpacked():
    zeros = member("demoflow.py", size=80 << 20)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
        tar.addfile(zeros, io.BytesIO(bytes(80 << 20)))
    big = lint_package(raw.getvalue(), "demoflow.py", 60)
    assert not big.passed and big.detail == "the code package unpacks to more than 64 MiB", big.detail
    many = lint_package(tarball([member(f"f{i}") for i in range(10_001)]), "demoflow.py", 60)
    assert not many.passed and many.detail == "the code package has more than 10000 entries", many.detail


def cgroups_available() -> bool:
    group = isolation._Cgroup(isolation.Limits())
    group.close()
    return bool(group.dirs)


@pytest.mark.skipif(not cgroups_available(),
                    reason="this host gives us no writable memory cgroup (rlimits alone bound each process)")
def test_memory_is_capped_for_the_whole_sandbox_not_just_per_process(tmp_path):
    result = lint_in_a_run_process(tmp_path, hostile("""
        children = []
        for _ in range(6):  # each under RLIMIT_AS, together three times the sandbox's 2 GiB
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                hog = bytearray(1 << 30)
                for j in range(0, len(hog), 4096):
                    hog[j] = 1
                os.write(w, b"1")
                time.sleep(60)
                os._exit(0)
            os.read(r, 1)  # it holds its GiB, or it is dead
            children.append(pid)
        alive = [pid for pid in children if os.waitpid(pid, os.WNOHANG) == (0, 0)]
        print(f"HELD {len(alive)} GiB")
        """))
    held = int(re.search(r"HELD (\d+) GiB", result["detail"])[1])
    assert held <= 2, result["detail"]  # the cgroup's OOM killer took the rest, inside the sandbox only


def test_a_well_behaved_package_passes_through_the_same_isolation():
    result = lint_package(package(GOOD_SOURCE), "demoflow.py", 300)
    assert result.passed, result.detail
    assert "graph looks good" in result.detail and "Pylint is happy" in result.detail and "UNSAFE" not in result.detail


def test_a_graph_error_is_still_caught():
    broken = GOOD_SOURCE.replace("self.next(self.join)", "self.next(self.end)")
    result = lint_package(package(broken), "demoflow.py", 300)
    assert not result.passed and "failed" in result.detail, result.detail


def test_a_host_without_bwrap_fails_closed(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    result = lint_package(package(GOOD_SOURCE), "demoflow.py", 60)
    assert not result.passed and "bubblewrap (`bwrap`) is not installed" in result.detail
    assert "promotion.lint_isolation" in result.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to create the refusing user namespace as root")
def test_a_host_that_refuses_user_namespaces_fails_closed(tmp_path):
    """As in a container under Docker's default seccomp profile: no new user namespace."""
    refuse = ["unshare", "--user", "--map-root-user", "sh", "-c",
              'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "refuse"]
    result = lint_in_a_run_process(tmp_path, GOOD_SOURCE, wrap=refuse)
    assert not result["passed"], result["detail"]
    assert result["detail"].startswith("cannot isolate the lint on this host: "), result["detail"]
    assert "promotion.lint_isolation: none" in result["detail"]


def processes_of(uid: int) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid == uid:
                found.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def wait_for(condition, deadline_seconds: float = 60) -> bool:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_the_sandbox_command_shares_nothing_it_need_not():
    """The bwrap command line (pure): every namespace unshared, the environment only what is given,
    nobody's uid when run as root, nothing of the host bound writable."""
    from platform_ops.promotion.isolation import Limits, command

    cmd = command(["python", "flow.py", "check"], "/tmp/pkg", {"HOME": "/tmp"}, Limits(), as_root=True, userns_fd=7)
    assert cmd[:3] == ["bwrap", "--userns", "7"]
    assert {"--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session",
            "--clearenv"} <= set(cmd)
    assert "--bind" not in cmd and "--dev-bind" not in cmd  # every host path is a read-only bind
    assert [cmd[i + 1:i + 3] for i, a in enumerate(cmd) if a == "--setenv"] == [["HOME", "/tmp"]]
    assert cmd[cmd.index("--") - 7:cmd.index("--")] == ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                                         "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    assert cmd[cmd.index("--") + 1:] == ["python", "flow.py", "check"]
    assert "/root" not in [cmd[i + 2] for i, a in enumerate(cmd) if a == "--ro-bind"]  # no home directory
    unprivileged = command(["python"], "/tmp/pkg", {}, Limits(), as_root=False)
    assert "--unshare-user" in unprivileged and "setpriv" not in unprivileged
