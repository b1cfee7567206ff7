"""Run staging-controlled code (a flow file's `check`) where nothing of platform-ops is in reach.

The code comes from staging, where anyone may deploy anything; the process that runs it holds the
Slack token and credentials that can change production. Under `namespaces` the command runs in
bubblewrap (`bwrap`) with:

- its own user, PID, network, IPC, UTS and cgroup namespaces: a fresh /proc that shows none of
  our processes, no network at all (a loopback of its own, nothing routed: no AWS endpoint, no
  169.254.169.254 / 169.254.170.2 credential service), and no nested user namespaces (which
  would hand it capabilities to mount over its limits);
- a filesystem of read-only binds (/usr, the Python installation and virtualenv that run the
  check, the data directory at /package), a private size-limited tmpfs at /tmp as HOME, no /etc
  beyond the loader cache, none of the host's home directories;
- an allow-listed environment (bwrap itself is started with it too);
- an unprivileged uid with no capabilities and no_new_privs, rlimits on CPU seconds, address
  space, processes and file size (which bounds the output, written to a file), a memory and
  process cgroup where the host lets us make one, and a wall-clock deadline after which the whole
  namespace is killed.

RLIMIT_NPROC is not enforced for uid 0, so a fork bomb is only bounded if the code runs as a real
non-root uid. bwrap alone maps just the caller's uid; when platform-ops runs as root, a user
namespace is prepared that maps root (so bwrap can bind the Python installation, which may sit in
root's home) and `nobody` (65534), and `setpriv` drops to `nobody` before anything else runs.

Where the host refuses new user namespaces (Docker's default seccomp profile, many ECS/Fargate
tasks), `probe()` says why and the caller fails closed.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
DATA_DIR = "/package"  # where the caller's data directory appears, read-only


class IsolationUnavailable(RuntimeError):
    """This host cannot build the sandbox (no bwrap, user namespaces refused, ...)."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 300
    cpu_seconds: int = 300
    memory_bytes: int = 2 << 30  # per process (RLIMIT_AS), and for the whole sandbox where a cgroup can be made
    processes: int = 64
    file_bytes: int = 32 << 20  # any one file, the output included
    tmp_bytes: int = 128 << 20


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None when cut off by the wall-clock deadline
    output: str  # stdout + stderr (at most Limits.file_bytes)
    cut_off: str | None  # why the run was stopped, in words, or None


def command(argv: list[str], data_dir: str, env: dict[str, str], limits: Limits, *, as_root: bool,
            userns_fd: int | None = None) -> list[str]:
    """The bwrap command line that runs `argv` with `data_dir` at /package (pure: no I/O but
    reading which of the merged-/usr links exist)."""
    cmd = ["bwrap"]
    # With a prepared namespace, nested ones are refused by its max_user_namespaces (see below).
    cmd += ["--userns", str(userns_fd)] if userns_fd is not None else ["--unshare-user", "--disable-userns"]
    cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
            "--die-with-parent", "--new-session", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    if os.path.exists("/etc/ld.so.cache"):
        cmd += ["--perms", "0755", "--dir", "/etc", "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    # /tmp first: a virtualenv under /tmp (a CI clone) is then bound on top of it, not hidden by it
    cmd += ["--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
    trees = _python_trees()
    for source in trees:  # mount points readable by nobody (bwrap would make them 0700)
        cmd += [arg for parent in _parents(source) if not _inside(parent, trees)
                for arg in ("--perms", "0755", "--dir", parent)]
        cmd += ["--ro-bind", source, source]
    cmd += ["--ro-bind", data_dir, DATA_DIR, "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp"]
    for key, value in sorted(env.items()):
        cmd += ["--setenv", key, value]
    if as_root:  # drop to nobody: a real unprivileged uid, so RLIMIT_NPROC holds
        cmd += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs"]
    return [*cmd, "--", *argv]


def _python_trees() -> list[str]:
    """The installation and virtualenv of the interpreter that runs the check, unless under /usr."""
    trees = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)}
    trees |= {p for p in (sys.base_prefix, sys.prefix)}  # the venv's own path, symlinks and all
    return sorted(t for t in trees if not (t == "/usr" or t.startswith("/usr/")))


def _inside(path: str, trees: list[str]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in trees)


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def probe(limits: Limits = Limits()) -> str | None:
    """None when the sandbox can be built here, else why not (in words)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (`bwrap`) is not installed"
    if os.geteuid() == 0 and (shutil.which("setpriv") is None or shutil.which("nsenter") is None):
        return "util-linux `setpriv` and `nsenter` are needed"
    with tempfile.TemporaryDirectory(prefix="platform-ops-probe-") as empty:
        os.chmod(empty, 0o755)
        try:
            outcome = run(["/bin/true"], empty, {}, limits)
        except IsolationUnavailable as exc:
            return str(exc)
    if outcome.exit_code != 0:
        return f"bwrap could not start a sandbox: {outcome.output.strip() or f'exit {outcome.exit_code}'}"
    return None


def run(argv: list[str], data_dir: str, env: dict[str, str], limits: Limits) -> Outcome:
    """Run `argv` in the sandbox with `env` (nothing else), `data_dir` read-only at /package."""
    as_root = os.geteuid() == 0
    holder = _userns_holder() if as_root else None
    try:
        fds = [] if holder is None else [holder[1]]
        cmd = command(argv, data_dir, env, limits, as_root=as_root, userns_fd=fds[0] if fds else None)
        return _supervise(cmd, limits, fds, nproc=limits.processes if as_root
                          else _own_processes() + limits.processes)
    finally:
        if holder is not None:
            os.close(holder[1])
            holder[0].kill()
            holder[0].wait()


def run_unisolated(argv: list[str], cwd: str, env: dict[str, str], limits: Limits) -> Outcome:
    """`promotion.lint_isolation: none`: same user, same network, same files; only the environment
    is scrubbed and the rlimits apply (RLIMIT_NPROC only for a non-root user; a child that starts
    its own session outlives the deadline). Unsafe with staging code: see the README."""
    return _supervise([*argv], limits, [], nproc=None, cwd=cwd, env=env)


def _userns_holder() -> tuple[subprocess.Popen, int]:
    """A user namespace mapping root and nobody, in which no further user namespace can be made,
    held open by a sleeping process; its fd for bwrap."""
    try:
        holder = subprocess.Popen(["unshare", "--user", "sleep", "3600"], env={"PATH": SANDBOX_PATH},
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        raise IsolationUnavailable(f"cannot start `unshare --user`: {exc}") from None
    ours, deadline = os.stat("/proc/self/ns/user").st_ino, time.monotonic() + 30
    try:
        while os.stat(f"/proc/{holder.pid}/ns/user").st_ino == ours:
            if holder.poll() is not None:
                raise IsolationUnavailable("new user namespaces are refused here (`unshare --user`: "
                                           f"{holder.stderr.read().decode(errors='replace').strip()})")
            if time.monotonic() > deadline:
                raise IsolationUnavailable("`unshare --user` did not enter a user namespace within 30 s")
            time.sleep(0.005)
        mapping = f"0 0 1\n{NOBODY} {NOBODY} 1\n".encode()
        for name in ("uid_map", "gid_map"):  # one write each, as the kernel requires
            fd = os.open(f"/proc/{holder.pid}/{name}", os.O_WRONLY)
            try:
                os.write(fd, mapping)
            finally:
                os.close(fd)
        # user.max_user_namespaces is per user namespace: 0 in this one, so the code cannot nest
        # one (with every capability inside it) to mount past its tmpfs size or probe the kernel.
        sealed = subprocess.run(["nsenter", f"--user=/proc/{holder.pid}/ns/user", "sh", "-c",
                                 "echo 0 > /proc/sys/user/max_user_namespaces"], env={"PATH": SANDBOX_PATH},
                                capture_output=True, text=True, timeout=30)
        if sealed.returncode != 0:
            raise IsolationUnavailable(f"cannot forbid nested user namespaces: {sealed.stderr.strip()}")
        return holder, os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY)
    except BaseException:
        holder.kill()
        holder.wait()
        raise


def _own_processes() -> int:
    uid = os.getuid()
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)


def _owner(p: Path) -> int | None:
    try:
        return p.stat().st_uid
    except OSError:
        return None


class _Cgroup:
    """A memory + pids cgroup for the sandbox, where the host lets us make one (cgroup v2, or v1's
    memory and pids hierarchies): RLIMIT_AS is per process, this bounds them all, kernel memory
    (tmpfs inodes) included. Best effort: without it the rlimits still apply."""

    def __init__(self, limits: Limits):
        self.dirs: list[Path] = []
        name = f"platform-ops-lint-{uuid.uuid4().hex[:12]}"
        try:
            for controller, files in self._layout(limits):
                base = self._own(controller)
                if base is None:
                    continue
                path = base / name
                path.mkdir()
                self.dirs.append(path)
                for file, value in files.items():
                    (path / file).write_text(value)
        except OSError:
            self.close()
            self.dirs = []

    @staticmethod
    def _layout(limits: Limits) -> list[tuple[str, dict[str, str]]]:
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # v2: one hierarchy
            return [("", {"memory.max": str(limits.memory_bytes), "memory.swap.max": "0",
                          "pids.max": str(limits.processes)})]
        return [("memory", {"memory.limit_in_bytes": str(limits.memory_bytes)}),
                ("pids", {"pids.max": str(limits.processes)})]

    @staticmethod
    def _own(controller: str) -> Path | None:
        """This process's cgroup directory in `controller`'s hierarchy ("" = v2)."""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if (controller == "" and names == "") or controller in names.split(","):
                base = Path("/sys/fs/cgroup") / controller / path.lstrip("/")
                return base if base.is_dir() and os.access(base, os.W_OK) else None
        return None

    def join(self) -> None:
        """In the child, before exec: move this process (and so all it starts) in."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text("0")

    def close(self) -> None:
        for path in reversed(self.dirs):
            for _ in range(100):  # the namespace is dead; its processes may take a moment to leave
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def _supervise(cmd: list[str], limits: Limits, fds: list[int], nproc: int | None, cwd: str | None = None,
               env: dict[str, str] | None = None) -> Outcome:
    """Start `cmd` with the limits, output to a file (bounded by RLIMIT_FSIZE), and kill its
    whole process group at the deadline."""
    group = _Cgroup(limits)

    def limit() -> None:
        group.join()
        for which, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                             (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_NOFILE, 256)):
            resource.setrlimit(which, (value, value))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    try:
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env if env is not None else {"PATH": SANDBOX_PATH},
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        pass_fds=fds, preexec_fn=limit, start_new_session=True)
            except OSError as exc:
                raise IsolationUnavailable(f"cannot start {cmd[0]}: {exc}") from None
            cut_off = None
            try:
                code: int | None = proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap's --die-with-parent takes the namespace with it
                proc.wait()
                code, cut_off = None, f"did not finish in {limits.wall_seconds:g} s"
            if code is not None:
                cut_off = _cut_off_by(code, limits)
            size = out.seek(0, os.SEEK_END)
            if size >= limits.file_bytes and cut_off is None:
                cut_off = f"wrote more than {limits.file_bytes >> 20} MiB of output"
            out.seek(0)
            return Outcome(code, out.read(limits.file_bytes).decode(errors="replace"), cut_off)
    finally:
        group.close()


def _cut_off_by(code: int, limits: Limits) -> str | None:
    """A signal death (negative, or bwrap's 128+N) that one of our limits explains."""
    sig = -code if code < 0 else code - 128 if code > 128 else None
    return {signal.SIGXCPU: f"used more than {limits.cpu_seconds} s of CPU",
            signal.SIGXFSZ: f"wrote a file or output over {limits.file_bytes >> 20} MiB",
            signal.SIGKILL: "was killed (a limit was exceeded)"}.get(sig)
