"""The code location loads from the settings file and wires what the settings say."""

import asyncio
import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.definitions.freshness_evaluator import FRESHNESS_EVALUATORS_BY_POLICY_TYPE
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import freeze_time

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




SUMMARIES = ("batch_queue_summary", "ecs_capacity_summary")


def test_the_summaries_carry_a_freshness_policy_of_metrics_freshness_minutes(sandbox_settings):
    """metrics.freshness_minutes is the policy's fail window on both summaries, and nothing else of the
    superseded freshness checks is left (no freshness asset check, no sensor to run them)."""
    settings = dataclasses.replace(sandbox_settings, metrics=dataclasses.replace(sandbox_settings.metrics,
                                                                                 freshness_minutes=42))
    defs = build_defs(settings)
    graph = defs.resolve_asset_graph()
    policies = {key.to_user_string(): graph.get(key).freshness_policy for key in graph.get_all_asset_keys()}
    expected = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=42))
    assert {k: v for k, v in policies.items() if v is not None} == {name: expected for name in SUMMARIES}
    checks = {key.name for key in graph.asset_check_keys if key.asset_key.to_user_string() in SUMMARIES}
    assert checks == {"no_runnable_older_than_reaper_threshold", "failure_rate_under_max"}
    assert "metrics_freshness_sensor" not in {s.name for s in defs.get_repository_def().sensor_defs}


def test_a_summary_older_than_the_window_fails_its_freshness_policy(sandbox_settings):
    """What the freshness daemon decides for a summary, at times counted from its materialization."""
    graph = build_defs(sandbox_settings).resolve_asset_graph()
    window = timedelta(minutes=sandbox_settings.metrics.freshness_minutes).total_seconds()
    with dg.instance_for_test() as instance:
        for name in SUMMARIES:
            node = graph.get(dg.AssetKey(name))
            evaluator = FRESHNESS_EVALUATORS_BY_POLICY_TYPE[type(node.freshness_policy)]()

            def state(evaluator=evaluator, node=node):
                return asyncio.run(evaluator.evaluate_freshness(LoadingContextForTest(instance), node))

            assert state() == FreshnessState.UNKNOWN  # never materialized
            instance.report_runless_asset_event(dg.AssetMaterialization(name))
            at = instance.get_latest_materialization_event(dg.AssetKey(name)).timestamp
            with freeze_time(at + window - 1):
                assert state() == FreshnessState.PASS
            with freeze_time(at + window + 1):  # freeze_time keeps microseconds: a second either side
                assert state() == FreshnessState.FAIL


def test_both_dagster_instances_run_the_freshness_daemon():
    for path in (ROOT / "dagster.yaml", ROOT / "deploy" / "dagster.yaml"):
        assert yaml.safe_load(path.read_text())["freshness"] == {"enabled": True}, path


def test_dagster_definitions_validate_accepts_the_module_without_warnings_from_our_code(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "platform_ops.definitions"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PLATFORM_OPS_SETTINGS": str(SANDBOX_SETTINGS), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
             "DAGSTER_HOME": str(tmp_path)},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-2000:]
    assert "Validation successful for code location platform_ops.definitions" in output
    # the CLI itself is superseded by `dg check defs` and says so; nothing we define may warn
    ours = [line for line in output.splitlines() if "Warning" in line and "/platform_ops/" in line]
    assert ours == [], ours
