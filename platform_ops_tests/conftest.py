"""One sandbox for the whole suite (moto over HTTP + Slack sink); a fresh world per test."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from platform_ops.adapters.aws import forget_sessions
from platform_ops.resources import build_resources
from platform_ops.sandbox import flows
from platform_ops.sandbox.server import Sandbox
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import SETTINGS_ENV_VAR, Settings, load_settings


@pytest.fixture(scope="session")
def sandbox_settings() -> Settings:
    return load_settings(SANDBOX_SETTINGS)


@pytest.fixture(scope="session")
def sandbox(sandbox_settings: Settings):
    box = Sandbox(sandbox_settings).start()
    saved = {k: os.environ.get(k) for k in [*box.product_env(), SETTINGS_ENV_VAR]}
    os.environ.update(box.product_env())
    os.environ[SETTINGS_ENV_VAR] = str(SANDBOX_SETTINGS)
    yield box
    box.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class World:
    """Handles on a freshly reset sandbox, through the same resources the product uses."""

    sandbox: Sandbox
    settings: Settings

    def control(self, action: str, body: dict) -> Any:
        req = urllib.request.Request(f"{self.sandbox.endpoint}/_sandbox/{action}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            result = json.load(resp)
        if action == "reset":
            forget_sessions()
        return result

    def submit(self, environment: str = "staging", queue: str | None = None, **job: Any) -> list[str]:
        queue = queue or self.settings.environments[environment].job_queues[0]
        return self.control("jobs", {"environment": environment, "queue": queue, **job})["job_ids"]

    def stuck(self, environment: str = "staging", count: int = 1, minutes: float = 150, **job: Any) -> list[str]:
        """Jobs asking for more than any instance type has: RUNNABLE for `minutes` already."""
        return self.submit(environment, count=count, vcpus=96, created_minutes_ago=minutes, **job)

    def fault(self, **rule: Any) -> None:
        self.control("faults", rule)

    def set_status(self, environment: str, job_id: str, status: str, **extra: Any) -> None:
        self.control("job-status", {"environment": environment, "job_id": job_id, "status": status, **extra})

    def resources(self) -> dict[str, Any]:
        return build_resources(self.settings)

    def batch(self, environment: str = "staging") -> Any:
        return self.resources()[f"aws_{environment}"].client("batch")

    def describe(self, environment: str, job_ids: list[str]) -> dict[str, dict]:
        jobs = self.batch(environment).describe_jobs(jobs=job_ids)["jobs"]
        return {j["jobId"]: j for j in jobs}

    def run_flow(self, environment: str, name: str, width: int = 3, faults: list[dict] | None = None) -> dict:
        """Run the environment's Metaflow DemoFlow to the end; `faults` apply to this run only."""
        for fault in faults or []:
            self.fault(run_id=name, **fault)
        return flows.run_to_end(self.sandbox.endpoint, self.settings.environments[environment], name, width)

    @property
    def messages(self) -> list[dict]:
        return list(self.sandbox.sink.state.messages)


@pytest.fixture
def world(sandbox: Sandbox, sandbox_settings: Settings) -> World:
    sandbox.reset()
    sandbox.sink.state.reset()
    forget_sessions()  # assumed-role keys minted before the reset are gone with it
    return World(sandbox, sandbox_settings)


@dataclass
class SmokeRun:
    proc: subprocess.CompletedProcess
    summary: dict
    rows: list[dict]  # the fault suite's, one per scenario
    table: str
    postgres_url: str | None  # where its Dagster instance lived, if PostgreSQL is installed


SMOKE_DEADLINE = 2400  # s: the smoke pass and the whole fault suite take ~7 min on a busy 2-core machine


_SMOKE: dict[str, Any] = {}  # the session's smoke pass, started in the background at collection


def pytest_collection_modifyitems(config, items):
    """The session's smoke run is set up inside the first test that asks for it: that test gets
    the smoke's deadline, not the per-test one (pyproject's timeout), which a busy machine beats.
    Its process starts as soon as the tests are collected, so it runs beside the rest of the suite
    (it is one process; the suite's own sandbox is another) instead of after it."""
    wanted = False
    for item in items:
        if "smoke_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(SMOKE_DEADLINE + 120))
            wanted = True
    if wanted and not _SMOKE:
        _start_smoke(Path(config.cache.mkdir("smoke")) if config.cache else Path(os.getcwd()))


def _start_smoke(workdir: Path) -> None:
    """`make smoke FAULTS=1`, in its own process, on a Postgres-backed Dagster instance (production's
    storage) wherever PostgreSQL is installed (.ci/run ensures it)."""
    from platform_ops_tests import postgres

    stack = contextlib.ExitStack()
    report = workdir / "faults.jsonl"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "platform_ops.sandbox", "smoke", "--faults", "--faults-report", str(report)]
    url = stack.enter_context(postgres.server()) if postgres.binaries() else None
    if url:  # the driver dagster-postgres ships (SQLAlchemy 2.1 would pick psycopg 3 for postgresql://)
        cmd += ["--postgres-url", url.replace("postgresql://", "postgresql+psycopg2://")]
    out, err = open(workdir / "stdout", "w+"), open(workdir / "stderr", "w+")
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=out, stderr=err, text=True,
                            env={k: v for k, v in os.environ.items() if k != SETTINGS_ENV_VAR})
    stack.callback(lambda: proc.poll() is None and proc.kill())
    _SMOKE.update(proc=proc, report=report, url=url, stack=stack, out=out, err=err)


def pytest_sessionfinish(session, exitstatus):
    if _SMOKE:
        _SMOKE["stack"].close()


@pytest.fixture(scope="session")
def smoke_run():
    """The background smoke pass's result, waited for (with its deadline)."""
    proc = _SMOKE["proc"]
    try:
        proc.wait(timeout=SMOKE_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _SMOKE["out"].seek(0)
    _SMOKE["err"].seek(0)
    stdout, stderr = _SMOKE["out"].read(), _SMOKE["err"].read()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    report = _SMOKE["report"]
    lines = stdout.strip().splitlines()
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    yield SmokeRun(done, json.loads(lines[-1]) if lines else {}, rows, stderr[stderr.find("scenario "):],
                   _SMOKE["url"])
