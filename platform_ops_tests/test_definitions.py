"""The code location loads from the settings file and wires what the settings say."""

import dataclasses
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


