"""Metrics end to end: seeded jobs and instances → assets → CloudWatch, read back and compared."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from platform_ops.adapters.aws import AwsEnvironmentResource, count_calls
from platform_ops.code_location import build_defs
from platform_ops.metrics.defs import metrics_defs
from platform_ops.resources import build_resources
from platform_ops.sandbox import world as sandbox_world


@pytest.fixture
def settings(world, tmp_path):
    return dataclasses.replace(world.settings, metrics=dataclasses.replace(
        world.settings.metrics, local_dir=str(tmp_path / "metrics"), charts_dir=str(tmp_path / "charts")))


def refresh(defs, instance, **kwargs):
    return defs.resolve_job_def("refresh_platform_metrics").execute_in_process(instance=instance, **kwargs)


def materialized(result):
    return {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
            for e in result.get_asset_materialization_events()}


def stat(world, environment, metric, dims):
    cw = world.resources()[f"aws_{environment}"].client("cloudwatch")
    now = datetime.now(UTC)
    points = cw.get_metric_statistics(Namespace="PlatformOps/Batch", MetricName=metric,
                                      Dimensions=[{"Name": k, "Value": v} for k, v in dims.items()],
                                      StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5),
                                      Period=3600, Statistics=["Maximum"])["Datapoints"]
    return max(p["Maximum"] for p in points) if points else None


def test_published_metrics_match_the_seeded_jobs(world, settings, tmp_path):
    world.stuck("staging", count=3, minutes=150)
    world.submit("staging", count=2)  # SUCCEEDED
    world.fault(fault="oom", remaining=1, account="111111111111")
    world.submit("staging", count=1)  # FAILED
    world.stuck("production", count=2, minutes=10)
    env = world.settings.environments["staging"]
    sandbox_world.register_instances(world.sandbox.endpoint, env, 2)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        result = refresh(defs, instance)
        assert result.success
        meta = materialized(result)
        q = {"Environment": "staging", "JobQueue": "ml-staging"}
        assert stat(world, "staging", "RunnableJobs", q) == 3
        assert stat(world, "staging", "RUNNABLE", q) == 3
        assert stat(world, "staging", "SUCCEEDED", q) == 2
        assert stat(world, "staging", "FAILED", q) == 1
        assert stat(world, "staging", "FailureRate", q) == pytest.approx(1 / 3)
        assert 149 * 60 < stat(world, "staging", "OldestRunnableAgeSeconds", q) < 151 * 60
        assert stat(world, "production", "RunnableJobs", {"Environment": "production", "JobQueue": "ml-production"}) == 2
        ce = {"Environment": "staging", "ComputeEnvironment": "staging-ondemand"}
        assert stat(world, "staging", "ActiveContainerInstances", ce) == 2
        assert stat(world, "staging", "RegisterContainerInstance", ce) == 2
        assert stat(world, "staging", "RegisteredVcpu", ce) == 8
        # numbers the asset's Plots tab draws across materializations, per queue
        summary = meta["batch_queue_summary"]
        assert summary["runnable/staging/ml-staging"] == dg.MetadataValue.int(3)
        assert 149 * 60 < summary["oldest_runnable_age_s/staging/ml-staging"].value < 151 * 60
        assert isinstance(summary["oldest_runnable_age_s/staging/ml-staging"], dg.FloatMetadataValue)
        # both queues hold jobs too big for any instance: Batch's reason says they block them
        assert summary["blocked/staging/ml-staging"].value == summary["blocked/production/ml-production"].value == 1
        assert summary["blocked_queues"].value == 2
        rows = {r.data["queue"]: r.data for r in summary["blocked"].value.records}
        assert rows["ml-staging"]["reason"].startswith("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - ")
        assert rows["ml-staging"]["source"] == "job status"
        region = world.settings.environments["staging"].region
        assert meta["cloudwatch_dashboards"]["dashboard_staging"] == dg.MetadataValue.url(
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            "#dashboards/dashboard/platform-ops-staging")
        published = meta["cloudwatch_metrics"]["metrics_published"].value
        # per queue 7 states + 6 gauges, minus production's NaN ones (nothing finished: no wait/run p95,
        # no failure rate); per compute environment 8
        assert published == 13 + (13 - 3) + 2 * 8
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_runnable_older_than_reaper_threshold"].passed is False
    assert checks["failure_rate_under_max"].passed is False
    assert (tmp_path / "charts" / "staging-runnable.png").read_bytes()[:4] == b"\x89PNG"
    assert meta["cloudwatch_dashboards"]["chart_staging"].value.startswith("![staging RUNNABLE](data:image/png;base64,")


def test_dashboards_are_put_once_and_deregistrations_are_seen(world, settings):
    env = world.settings.environments["staging"]
    sandbox_world.register_instances(world.sandbox.endpoint, env, 3)
    defs = build_defs(settings)
    with dg.instance_for_test() as instance:
        first = materialized(refresh(defs, instance))
        assert sorted(first["cloudwatch_dashboards"]["dashboards_put"].value) == ["platform-ops-production",
                                                                                 "platform-ops-staging"]
        body = json.loads(world.resources()["aws_staging"].client("cloudwatch").get_dashboard(
            DashboardName="platform-ops-staging")["DashboardBody"])
        assert any(w["properties"]["title"] == "RUNNABLE jobs" for w in body["widgets"])
        sandbox_world.deregister_instances(world.sandbox.endpoint, env, 2)
        with count_calls() as calls:
            second = materialized(refresh(defs, instance))
        assert second["cloudwatch_dashboards"]["dashboards_put"].value == []
        assert "CloudWatch.PutDashboard" not in calls and calls["CloudWatch.GetDashboard"] == 2
        assert calls["CloudWatch.PutMetricData"] == 2  # one per account: every datum fits one call
    ce = {"Environment": "staging", "ComputeEnvironment": "staging-ondemand"}
    assert stat(world, "staging", "DeregisterContainerInstance", ce) == 2
    assert stat(world, "staging", "ActiveContainerInstances", ce) == 3  # the hour's maximum


def test_one_environment_failing_still_materializes_the_other(world, settings):
    world.stuck("staging", count=1)
    broken = AwsEnvironmentResource(environment="production", account_id="222222222222", region_name="us-east-1",
                                    endpoint_url="http://127.0.0.1:9", max_attempts=1)
    assets = [a for a in metrics_defs(settings).assets if a.key.path[0] in ("batch_jobs", "batch_queue_summary")]
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, resources={**build_resources(settings), "aws_production": broken},
                                instance=instance)
    meta = materialized(result)
    assert meta["batch_jobs"]["jobs"].value == 1
    assert "production/ml-production: EndpointConnectionError" in json.dumps(meta["batch_jobs"]["errors"].value)
    rows = {r.data["queue"]: r.data for r in meta["batch_queue_summary"]["summary"].value.records}
    assert rows["ml-staging"]["RUNNABLE"] == 1 and rows["ml-production"]["RUNNABLE"] == 0


def test_a_refused_publish_is_retried_and_no_datum_goes_out_twice(world, settings, monkeypatch):
    """An AWS failure that outlasts botocore's attempts fails the step and the job's retry policy
    runs it again; the datums carry the run's time and the batches put before the failure are
    not put again, so CloudWatch holds every sample once."""
    import platform_ops.metrics.defs as metrics

    monkeypatch.setattr(metrics, "METRICS_RETRY", dg.RetryPolicy(max_retries=1))  # no 30 s wait here
    world.stuck("staging", count=1)
    world.stuck("production", count=1)
    world.control("aws-faults", {"kind": "fail-operation", "service": "monitoring", "operation": "PutMetricData",
                                 "match": "production", "times": 1})  # staging's call goes first, and in
    defs = build_defs(settings)
    with dg.instance_for_test() as instance, count_calls() as calls:
        result = refresh(defs, instance)
    assert result.success
    retried = [e.step_key for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried == ["cloudwatch_metrics"]
    assert calls["CloudWatch.PutMetricData"] == 3  # staging; production refused; production again
    cw = world.resources()["aws_staging"].client("cloudwatch")
    now = datetime.now(UTC)
    [point] = cw.get_metric_statistics(
        Namespace="PlatformOps/Batch", MetricName="RunnableJobs", Statistics=["SampleCount", "Maximum"],
        Dimensions=[{"Name": "Environment", "Value": "staging"}, {"Name": "JobQueue", "Value": "ml-staging"}],
        StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5), Period=3600)["Datapoints"]
    assert (point["SampleCount"], point["Maximum"]) == (1, 1)
    assert stat(world, "production", "RunnableJobs", {"Environment": "production", "JobQueue": "ml-production"}) == 1


def test_throttling_that_outlasts_the_client_fails_the_step_instead_of_leaving_a_gap(world, settings):
    """A broken environment is recorded and the rest materializes (above); a throttle that got
    through every attempt is not a fact about the queue: the step fails, for its retry policy."""
    world.stuck("staging", count=1)
    world.control("aws-faults", {"kind": "throttle", "services": ["batch"], "pattern": "x" + "." * 99})
    impatient = AwsEnvironmentResource(environment="staging", account_id="111111111111", region_name="us-east-1",
                                       max_attempts=1)
    [asset] = [a for a in metrics_defs(settings).assets if a.key.path[0] == "batch_jobs"]
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], resources={**build_resources(settings), "aws_staging": impatient},
                                instance=instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "TooManyRequestsException" in str(failure.event_specific_data.error)


def test_the_capacity_step_runs_without_an_asset_and_counts_instances_gone_since_the_last_read(world, settings):
    import logging

    from platform_ops.metrics import defs as metrics

    env = world.settings.environments["staging"]
    sandbox_world.register_instances(world.sandbox.endpoint, env, 3)
    resources = world.resources()
    step = metrics.MetricsStep(dg.DagsterInstance.ephemeral(), "run-1", logging.getLogger("test"),
                               lambda environment: resources[f"aws_{environment}"])
    now = datetime.now(UTC)
    first, read = metrics.capacity(settings, step, now)
    assert read.errors == [] and len(read.arns[("staging", "staging-ondemand")]) == 3
    assert first.set_index("compute_environment").loc["staging-ondemand", "deregistered"] == 0
    sandbox_world.deregister_instances(world.sandbox.endpoint, env, 2)
    second, _ = metrics.capacity(settings, step, now)
    row = second.set_index("compute_environment").loc["staging-ondemand"]
    assert (row["deregistered"], row["active"]) == (2, 1)
    third, _ = metrics.capacity(settings, step, now)  # nothing left since the second read
    assert third.set_index("compute_environment").loc["staging-ondemand", "deregistered"] == 0


def test_a_queue_blocked_event_reaches_the_queue_summary(world, settings):
    """Where events flow, the reaper's watch keeps Batch's "Batch Job Queue Blocked" word (the
    sandbox's Batch publishes it for a job no instance type fits), and the summary shows it from
    there, ahead of the listed job's statusReason."""
    from platform_ops.reaper import defs as reaper_defs

    envs = dict(settings.environments)
    envs["production"] = dataclasses.replace(envs["production"], events_queue="platform-ops-events")
    settings = dataclasses.replace(settings, environments=envs)
    world.stuck("production", count=1, minutes=5)  # the sandbox's Batch says it blocks the queue
    reason = ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is "
              "higher than that can be met by the CE(s) attached to the job queue.")
    defs = build_defs(settings)
    assets = [a for a in metrics_defs(settings).assets if a.key.path[0] in ("batch_jobs", "batch_queue_summary")]
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            defs.resolve_sensor_def("aws_events_sensor").evaluate_tick(ctx)
        assert list(reaper_defs.queue_blocks(instance, "production")) == ["ml-production"]
        summary = materialized(dg.materialize(assets, resources=build_resources(settings), instance=instance))
    meta = summary["batch_queue_summary"]
    assert meta["blocked/production/ml-production"].value == 1 and meta["blocked/staging/ml-staging"].value == 0
    [row] = [r.data for r in meta["blocked"].value.records]
    assert (row["queue"], row["reason"], row["source"]) == ("ml-production", reason, "queue blocked event")
