"""The fault suite, as `make smoke --faults` runs it: one subprocess, one table of figures, every
figure exact. A scenario that fails shows its row and why."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from platform_ops.sandbox.faults import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    report = tmp_path_factory.mktemp("faults") / "faults.jsonl"
    proc = subprocess.run([sys.executable, "-m", "platform_ops.sandbox", "smoke", "--faults", "--faults-report",
                           str(report)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    table = proc.stderr[proc.stderr.find("scenario "):]
    print(table)  # pytest -s shows the figures
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    return proc, json.loads(proc.stdout.strip().splitlines()[-1]), rows, table


def test_smoke_adds_the_fault_figures_and_passes(suite):
    proc, line, rows, table = suite
    assert proc.returncode == 0, table or proc.stderr[-3000:]
    assert line["faults_total"] == len(SCENARIOS) + 1 == len(rows)  # + the secrets scan
    assert line["faults_passed"] == line["faults_total"]
    assert line["stuck_jobs_cancelled"] == 6 and line["failed_executions_alerted"] == 2  # the smoke pass itself


@pytest.mark.parametrize("index", range(len(SCENARIOS) + 1))
def test_each_scenario_is_exact(suite, index):
    _, _, rows, table = suite
    row = rows[index]
    assert row["problems"] == [], table
    assert row["alerts_sent"] == row["alerts_expected"] and row["alerts_lost"] == row["alerts_duplicated"] == 0
    assert row["cancels_made"] == row["cancels_expected"] and row["cancels_wrong"] == 0
    assert row["passed"]


def test_the_suite_exercises_what_it_claims(suite):
    """Figures of zero prove nothing: the scenarios that are about alerts and cancels have some."""
    _, _, rows, _ = suite
    by_name = {r["scenario"]: r for r in rows}
    assert sum(r["alerts_expected"] for r in rows) >= 15 and sum(r["cancels_expected"] for r in rows) >= 25
    assert by_name["job moves to STARTING before the cancel"]["cancels_expected"] == 2
    assert by_name["more stuck jobs than the breaker allows"]["cancels_expected"] == 5
    assert "no secret in logs, run metadata or messages" in by_name


def test_the_scan_finds_a_planted_credential(monkeypatch):
    """The last row is only worth its 'ok' if a leak would show: plant each credential once."""
    from types import SimpleNamespace

    from platform_ops.sandbox.faults import distinctive_credentials, scan

    credentials = distinctive_credentials()
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    clean = SimpleNamespace(transcript=["run config {}", "INFO reaped 3 jobs"], secrets={"assumed-role-secret-0001"})
    assert scan(clean).passed
    for leaked in [*credentials.values(), "assumed-role-secret-0001"]:
        box = SimpleNamespace(transcript=[*clean.transcript, f"Authorization: {leaked}"], secrets=clean.secrets)
        assert not scan(box).passed and "appears 1 times" in scan(box).problems[0]
