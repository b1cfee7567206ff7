"""The watcher's health, decided: failing ticks, stopped sensors, failing runs, heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from platform_ops.health.core import (
    HealthPolicy,
    Instigator,
    Problem,
    ProblemKind,
    Run,
    Tick,
    TickStatus,
    dump_state,
    load_state,
    plan_health,
    problem_message,
    resolved_message,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = HealthPolicy(should_run=True, failed_ticks=3, failed_runs=3)


def ticks(*statuses: str, error: str = "botocore.exceptions.ClientError: AccessDenied") -> tuple[Tick, ...]:
    """Most recent first, one a minute back from NOW."""
    return tuple(Tick(TickStatus(s), NOW - timedelta(minutes=i), error if s == "failure" else None)
                 for i, s in enumerate(statuses))


def sensor(name: str, *statuses: str, stopped: bool = False) -> Instigator:
    return Instigator(name, "sensor", stopped, ticks(*statuses))


def test_three_failed_ticks_in_a_row_open_one_problem_with_the_last_error():
    failing = sensor("stuck_jobs_sensor", "failure", "failure", "failure", "success")
    plan = plan_health([failing], {}, {}, {}, POLICY, NOW)
    [problem] = plan.announce
    assert (problem.kind, problem.subject, problem.count) == (ProblemKind.FAILING_TICKS, "stuck_jobs_sensor", 3)
    assert problem.since == NOW - timedelta(minutes=2)  # the first failure of the streak
    assert "AccessDenied" in problem.detail
    assert list(plan.open_after) == ["failing-ticks:stuck_jobs_sensor"]


def test_two_failed_ticks_are_not_yet_a_problem_and_a_running_tick_does_not_break_the_streak():
    assert not plan_health([sensor("s", "failure", "failure", "success")], {}, {}, {}, POLICY, NOW).announce
    assert plan_health([sensor("s", "started", "failure", "failure", "failure")], {}, {}, {}, POLICY, NOW).announce


def test_an_open_problem_is_not_announced_again_and_keeps_its_first_since():
    first = plan_health([sensor("s", "failure", "failure", "failure")], {}, {}, {}, POLICY, NOW)
    later = plan_health([sensor("s", "failure", "failure", "failure", "failure")], {}, first.open_after, {}, POLICY,
                        NOW + timedelta(minutes=1))
    assert later.announce == () and later.resolve == ()
    assert later.open_after["failing-ticks:s"] == first.open_after["failing-ticks:s"]


def test_a_good_tick_resolves_it_once():
    opened = plan_health([sensor("s", "failure", "failure", "failure")], {}, {}, {}, POLICY, NOW).open_after
    plan = plan_health([sensor("s", "skipped", "failure", "failure", "failure")], {}, opened, {}, POLICY, NOW)
    assert plan.resolve == ("failing-ticks:s",) and plan.open_after == {}
    again = plan_health([sensor("s", "success", "skipped")], {}, plan.open_after, {}, POLICY, NOW)
    assert again.resolve == ()


def test_a_stopped_sensor_is_a_problem_only_when_the_settings_say_it_runs():
    stopped = [sensor("failed_executions_sensor", "success", stopped=True)]
    [problem] = plan_health(stopped, {}, {}, {}, POLICY, NOW).announce
    assert problem.kind == ProblemKind.STOPPED and problem.since == NOW
    assert not plan_health(stopped, {}, {}, {}, HealthPolicy(should_run=False), NOW).announce


def test_a_stopped_schedule_is_a_problem_too():
    schedule = Instigator("metrics_schedule", "schedule", True, ())
    [problem] = plan_health([schedule], {}, {}, {}, POLICY, NOW).announce
    assert problem.key == "stopped:metrics_schedule"


def test_runs_failing_in_a_row_per_job():
    def run(i: int, ok: bool) -> Run:
        return Run(f"r{i}", "reap_stuck_jobs", ok, NOW - timedelta(minutes=10 * i), None if ok else "Timeout")
    failing = {"reap_stuck_jobs": [run(0, False), run(1, False), run(2, False), run(3, True)]}
    [problem] = plan_health([], failing, {}, {}, POLICY, NOW).announce
    assert (problem.key, problem.count, problem.detail) == ("failing-runs:reap_stuck_jobs", 3, "Timeout")
    interrupted = {"reap_stuck_jobs": [run(0, False), run(1, True), run(2, False), run(3, False)]}
    assert not plan_health([], interrupted, {}, {}, POLICY, NOW).announce


def test_heartbeats_only_for_sensors_with_a_new_good_tick():
    sensors = [sensor("a", "success"), sensor("b", "failure", "success"), sensor("c", "started", "skipped"),
               Instigator("sched", "schedule", False, ticks("success"))]
    plan = plan_health(sensors, {}, {}, {}, POLICY, NOW)
    assert plan.heartbeats == ("a", "c")  # b's latest tick failed; schedules have no heartbeat
    again = plan_health(sensors, {}, {}, {"a": NOW, "c": NOW - timedelta(minutes=1)}, POLICY, NOW)
    assert again.heartbeats == ()  # nothing new since the last beat


def test_state_round_trips_through_the_cursor():
    opened = plan_health([sensor("s", "failure", "failure", "failure")], {}, {}, {}, POLICY, NOW).open_after
    problems, beats = load_state(dump_state(opened, {"a": NOW}))
    assert problems["failing-ticks:s"].since == opened["failing-ticks:s"].since
    assert problems["failing-ticks:s"].kind == ProblemKind.FAILING_TICKS and beats == {"a": NOW}
    assert load_state(None) == ({}, {})


def test_messages_say_what_is_wrong_and_escape_the_error():
    problem = Problem(ProblemKind.FAILING_TICKS, "stuck_jobs_sensor", NOW, 4, "<script> & more\n" * 20)
    message = problem_message(problem, "http://dagster/sensors")
    text = message.blocks[0]["text"]["text"]
    assert "sensor `stuck_jobs_sensor` failed 4 ticks in a row" in message.text
    assert "&lt;script&gt; &amp; more" in text and "<script>" not in text
    assert text.count("&lt;script&gt;") == 6  # the first lines, not the whole trace
    assert "<http://dagster/sensors|Open in Dagster>" in text
    assert "after 12m" in resolved_message(problem, "12m").text
