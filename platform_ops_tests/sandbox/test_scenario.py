"""Scenarios are data: parsed with clear errors, played into the sandbox."""

import pytest

from platform_ops.sandbox.scenario import SCENARIOS, ScenarioError, load_scenario, parse_scenario, play_round


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_play_in_the_sandbox(world, path):
    scenario = load_scenario(str(path))
    for round_no in range(2):
        play_round(world.sandbox, scenario, round_no)  # AWS validation (e.g. tag values) included


@pytest.mark.parametrize("data, message", [
    ({"events": [{"queue": "q"}]}, "scenario: events[0].environment: required key is missing"),
    ({"events": [{"environment": "staging", "queue": "q", "jobs": {"cpus": 4}}]}, "events[0].jobs.cpus: unknown key"),
    ({"events": [{"environment": "staging", "queue": "q", "faults": [{"fault": "meteor"}]}]},
     "events[0].faults[0].fault: expected one of exit_1,"),
    ({"events": [{"environment": "staging", "flow": {"faults": [{"fault": "oom", "stp": "train"}]}}]},
     "events[0].flow.faults[0].stp: unknown key"),
    ({"events": [{"environment": "staging", "jobs": {"count": 1}}]},
     "events[0].queue: required key is missing (jobs and faults go to a queue)"),
    ({"events": [{"environment": "staging", "queue": "q", "every": "2"}]},
     "events[0].every: input should be a valid integer, got '2'"),
    ({"evnts": []}, "scenario: events: required key is missing"),
    ([], "scenario: scenario: expected a mapping"),
])
def test_bad_scenarios_name_the_problem(data, message):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data)
    assert message in str(err.value)


def test_every_problem_is_reported_and_an_unnamed_event_is_named_by_position():
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"evnts": [], "interval_seconds": -1}, "mine.yaml")
    assert str(err.value).splitlines() == ["mine.yaml: interval_seconds: input should be greater than or equal to 0, "
                                           "got -1", "mine.yaml: events: required key is missing",
                                           "mine.yaml: evnts: unknown key"]
    scenario = parse_scenario({"events": [{"environment": "staging", "instances": {"register": 1}}]}, "mine.yaml")
    event = scenario.events[0]
    assert (scenario.name, event.name, event.instances.deregister_count) == ("mine.yaml", "event 0", 0)


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="default"):
        load_scenario("nope")


def test_a_round_plays_due_events_only(world):
    scenario = parse_scenario({"events": [
        {"name": "every round", "environment": "staging", "queue": "ml-staging", "jobs": {"count": 2, "vcpus": 96}},
        {"name": "odd", "environment": "production", "queue": "ml-production", "every": 2,
         "faults": [{"fault": "oom", "remaining": 1}], "jobs": {"count": 1}},
        {"name": "first", "environment": "staging", "queue": "ml-staging", "once": True, "jobs": {"count": 1}},
    ]})
    assert play_round(world.sandbox, scenario, 0) == {"every round": 2, "odd": 1, "first": 1}
    assert play_round(world.sandbox, scenario, 1) == {"every round": 2}
    failed = world.batch("production").list_jobs(jobQueue="ml-production", jobStatus="FAILED")["jobSummaryList"]
    assert [j["container"]["exitCode"] for j in failed] == [137]


def test_an_event_can_wait_rounds_and_arm_an_aws_fault(world):
    """`after` delays an event's first round (a streak, then a recovery); `aws_fault` arms what
    POST /_sandbox/aws-faults arms (here: Batch refusing ListJobs twice)."""
    scenario = parse_scenario({"events": [
        {"name": "later", "environment": "staging", "queue": "ml-staging", "after": 2, "every": 3,
         "jobs": {"count": 1}},
        {"name": "denied", "environment": "staging", "after": 1, "once": True,
         "aws_fault": {"kind": "fail-operation", "service": "batch", "operation": "ListJobs", "times": 2}},
    ]})
    assert [sorted(play_round(world.sandbox, scenario, n)) for n in range(6)] == [
        [], ["denied"], ["later"], [], [], ["later"]]
    batch = world.batch("staging")
    for _ in range(2):
        with pytest.raises(Exception, match="AccessDenied"):
            batch.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")
    assert "jobSummaryList" in batch.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")  # then it answers
