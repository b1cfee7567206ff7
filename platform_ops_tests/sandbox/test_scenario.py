"""Scenarios are data: parsed with clear errors, played into the sandbox."""

import pytest

from platform_ops.sandbox.scenario import SCENARIOS, ScenarioError, load_scenario, parse_scenario, play_round


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_play_in_the_sandbox(world, path):
    scenario = load_scenario(str(path))
    for round_no in range(2):
        play_round(world.sandbox, scenario, round_no)  # AWS validation (e.g. tag values) included


@pytest.mark.parametrize("data, message", [
    ({"events": [{"queue": "q"}]}, "events[0].environment: required string"),
    ({"events": [{"environment": "staging", "queue": "q", "jobs": {"cpus": 4}}]}, "events[0].jobs: unknown key 'cpus'"),
    ({"events": [{"environment": "staging", "queue": "q", "faults": [{"fault": "meteor"}]}]}, "faults[0].fault: one of"),
    ({"evnts": []}, "expected a mapping with an 'events' list"),
])
def test_bad_scenarios_name_the_problem(data, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(data)


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
