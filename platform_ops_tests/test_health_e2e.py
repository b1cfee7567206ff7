"""The watcher watched, over the wire: the health sensor reads ticks, stop states and runs from a
real Dagster instance (written through the instance's own storage API, as the daemon writes
them), posts to the Slack sink through slack_sdk exactly once, and sends heartbeats to moto's
CloudWatch through boto3."""

from __future__ import annotations

import time
import uuid

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteInstigatorOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    TickData,
    TickStatus,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._utils.error import SerializableErrorInfo

from platform_ops.adapters.aws import count_calls
from platform_ops.code_location import build_defs
from platform_ops.health.defs import HEALTH_SENSOR, HEARTBEAT_NAMESPACE, home_environment

LOCATION = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="platform_ops.definitions"),
                                       location_name="platform_ops")
REPOSITORY = RemoteRepositoryOrigin(LOCATION, "__repository__")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def defs(world):
    assert world.settings.sensors_running  # the sandbox's settings: the sensors should run
    return build_defs(world.settings)


def state(instance, name: str, kind: InstigatorType, status: InstigatorStatus) -> InstigatorState:
    return instance.add_instigator_state(InstigatorState(RemoteInstigatorOrigin(REPOSITORY, name), kind, status))


def record_tick(instance, st: InstigatorState, status: TickStatus, error: str | None = None) -> None:
    instance.create_tick(TickData(
        instigator_origin_id=st.instigator_origin_id, instigator_name=st.instigator_name,
        instigator_type=st.instigator_type, status=status, timestamp=time.time(), selector_id=st.selector_id,
        run_ids=[], run_keys=[],
        error=SerializableErrorInfo(error, [], "RuntimeError") if error else None))


def health_tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def(HEALTH_SENSOR)
    repo = defs.get_repository_def()
    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor,
                                 repository_def=repo, sensor_name=HEALTH_SENSOR) as ctx:
        return sensor.evaluate_tick(ctx)


def heartbeats(world) -> set[str]:
    home = world.settings.environments[home_environment(world.settings)]
    cloudwatch = world.resources()[f"aws_{home.name}"].client("cloudwatch")
    metrics = cloudwatch.list_metrics(Namespace=HEARTBEAT_NAMESPACE)["Metrics"]
    return {m["Dimensions"][0]["Value"] for m in metrics}


def test_a_failing_sensor_and_a_stopped_one_are_said_once_and_the_recovery_once(world, defs, instance):
    stuck = state(instance, "stuck_jobs_sensor", InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE)
    alerts = state(instance, "failed_executions_sensor", InstigatorType.SENSOR, InstigatorStatus.STOPPED)
    for _ in range(3):
        record_tick(instance, stuck, TickStatus.FAILURE, "stuck_jobs_sensor could not read: AccessDenied")
    record_tick(instance, alerts, TickStatus.SUCCESS)

    with count_calls() as calls:
        first = health_tick(defs, instance)
    texts = [m["text"] for m in world.messages]
    assert len(texts) == 2, texts
    assert any("sensor `stuck_jobs_sensor` failed 3 ticks in a row" in t for t in texts)
    assert any("`failed_executions_sensor` is stopped" in t for t in texts)
    assert calls["CloudWatch.PutMetricData"] == 1  # every heartbeat of the tick in one call
    assert "failed_executions_sensor" in heartbeats(world) and "stuck_jobs_sensor" not in heartbeats(world)

    with count_calls() as calls:
        again = health_tick(defs, instance, first.cursor)
    assert len(world.messages) == 2  # still failing, still stopped: nothing new to say
    assert calls["CloudWatch.PutMetricData"] == 0  # no tick completed since the last beat

    record_tick(instance, stuck, TickStatus.SUCCESS)
    health_tick(defs, instance, again.cursor)
    assert len(world.messages) == 3
    assert "sensor `stuck_jobs_sensor` ticks again" in world.messages[-1]["text"]
    assert "stuck_jobs_sensor" in heartbeats(world)

    health_tick(defs, instance, again.cursor)  # a tick whose cursor was lost re-plans the same resolution
    assert len(world.messages) == 3  # the ledger says it was said


def test_runs_of_this_code_location_that_keep_failing_are_said_once(world, defs, instance):
    for _ in range(3):
        run = dg.DagsterRun(job_name="reap_stuck_jobs", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.FAILURE)
        instance.add_run(run)
    cursor = health_tick(defs, instance).cursor
    health_tick(defs, instance, cursor)
    assert [m["text"] for m in world.messages if "reap_stuck_jobs" in m["text"]] == [
        ":warning: platform-ops: job `reap_stuck_jobs` failed 3 runs in a row: its work is not getting done"]
