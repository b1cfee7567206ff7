"""The fault suite, as `make smoke --faults` runs it: one subprocess, one table of figures, every
figure exact. A scenario that fails shows its row and why."""

import pytest

from platform_ops.sandbox.faults import SCENARIOS


@pytest.fixture
def suite(smoke_run):
    print(smoke_run.table)  # pytest -s shows the figures
    return smoke_run.proc, smoke_run.summary, smoke_run.rows, smoke_run.table


def test_smoke_prints_one_json_line_with_the_fault_figures(suite):
    proc, summary, rows, table = suite
    assert proc.returncode == 0, table or proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 1
    assert summary["faults_total"] == len(SCENARIOS) + 1 == len(rows)  # + the secrets scan
    assert summary["faults_passed"] == summary["faults_total"]
    # the smoke pass before the suite. smoke scenario: 3 stuck in staging (+1 protected) + 1 stuck
    # Metaflow task, 2 stuck in production; one report per queue
    assert summary["stuck_jobs_cancelled"] == 6  # + the stuck train task of a Metaflow run
    # alerts: the production runs' out-of-memory tasks (two runs in a row of one flow: one incident,
    # the second a reply in its thread and an update of its message), and the staging run failed
    # by the reaper (a reply under that reap's report, which is updated to list it)
    assert summary["failed_executions_alerted"] == 3
    assert (summary["incidents_opened"], summary["streak_updates"]) == (1, 1)
    # the alerts, the two reaper reports, the promotion's announcement, the hung ScoringFlow/train
    # task's long-run warning
    assert summary["slack_messages"] == 3 + 2 + 1 + 1
    assert (summary["long_runs"], summary["missed_schedules"], summary["health_alerts"]) == (1, 0, 0)
    # metrics: 2 queues x (7 states + 6 gauges, all finite: both queues have finished jobs) + 2 compute
    # environments x 8; one dashboard per environment
    assert summary["metrics_published"] == 2 * 13 + 2 * 8
    assert summary["dashboards"] == 2
    # pass 1: two reaps, one alert run (the summaries' freshness is a policy the daemon evaluates: no run);
    # pass 2: a reap of the protected job only (no report) + one alert run; then one metrics refresh
    # and one promotion of the staging DemoFlow after its latest run succeeded. Production is
    # event-driven: its failures are requested by aws_events_sensor; the first reconciling poll
    # finds the same set and skips its run key, which a run already has (no duplicate run).
    assert summary["promotions"] == 1
    assert summary["runs"] == 7 and summary["runs_failed"] == 0 and summary["sensor_ticks_failed"] == 0


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
    assert "no secret in logs, metadata, Slack or records" in by_name
    assert by_name["staging code prints our credentials"]["alerts_expected"] == 1


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
