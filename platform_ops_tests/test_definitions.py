"""The code location loads from the settings file and wires what the settings say."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

from platform_ops.code_location import build_defs
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defs_are_loadable_and_complete(sandbox_settings):
    defs = build_defs(sandbox_settings)
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("reap_stuck_jobs")
    for job in ("promotion_checks", "promote_flow", "rollback_flow"):  # CI launches set ops.<job>.config
        assert [node.name for node in defs.resolve_job_def(job).nodes] == [job]
    assert set(defs.resources) >= {"aws_staging", "aws_production", "slack"}


def test_sensor_status_and_interval_come_from_settings():
    settings = load_settings(ROOT / "settings.example.yaml")
    sensor = build_defs(settings).resolve_sensor_def("stuck_jobs_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.minimum_interval_seconds == 60
    sandbox = build_defs(load_settings(SANDBOX_SETTINGS)).resolve_sensor_def("stuck_jobs_sensor")
    assert sandbox.default_status == dg.DefaultSensorStatus.RUNNING
    assert sandbox.minimum_interval_seconds == 30


def test_each_environment_gets_its_own_aws_resource(sandbox_settings):
    defs = build_defs(sandbox_settings)
    prod = defs.resources["aws_production"]
    assert (prod.account_id, prod.role_arn, prod.region_name) == (
        "222222222222", "arn:aws:iam::222222222222:role/platform-ops", "us-east-1")
    assert prod.endpoint_url is None  # the endpoint comes from AWS_ENDPOINT_URL, like any boto3 program
    assert defs.resources["aws_staging"].role_arn is None
    extra = dataclasses.replace(sandbox_settings, environments={
        **sandbox_settings.environments,
        "research": dataclasses.replace(sandbox_settings.environments["staging"], name="research")})
    assert "aws_research" in build_defs(extra).resources


def test_dagster_cli_loads_the_workspace(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PLATFORM_OPS_SETTINGS": str(SANDBOX_SETTINGS), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "DAGSTER_HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "platform_ops" in proc.stdout + proc.stderr


def test_smoke_prints_one_json_line(sandbox):
    proc = subprocess.run([sys.executable, "-m", "platform_ops.sandbox", "smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    # smoke scenario: 3 stuck in staging (+1 protected) + 1 stuck Metaflow task, 2 stuck in production;
    # one report per queue
    assert summary["stuck_jobs_cancelled"] == 6  # + the stuck train task of a Metaflow run
    # alerts: the production run's out-of-memory task, and the staging run failed by the reaper
    assert summary["failed_executions_alerted"] == 2
    assert summary["slack_messages"] == 2 + 2
    # metrics: 2 queues x (7 states + 6 gauges, all finite: both queues have finished jobs) + 2 compute
    # environments x 8; one dashboard per environment
    assert summary["metrics_published"] == 2 * 13 + 2 * 8
    assert summary["dashboards"] == 2
    # pass 1: two reaps, one alert run, one freshness-check run (the summaries were never materialized);
    # pass 2: a reap of the protected job only (no report) + one alert run; then one metrics refresh
    # and one promotion of the staging DemoFlow after its latest run succeeded. Production is
    # event-driven: its failure is requested by aws_events_sensor and again by the first
    # reconciling poll, one more alert run that announces nothing (the ledger; 4 messages above).
    assert summary["promotions"] == 1
    assert summary["runs"] == 9 and summary["runs_failed"] == 0 and summary["sensor_ticks_failed"] == 0
