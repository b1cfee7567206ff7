"""Runs that take too long, decided: on ListJobs / ListExecutions pages shaped as AWS answers them
(through the adapters' own parsers), with Metaflow's job names and tags."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from platform_ops.adapters.batch import job_from_api
from platform_ops.adapters.stepfunctions import execution_from_api
from platform_ops.runtime import core
from platform_ops.vocabulary import owner_from_definition, to_epoch_ms

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
ARN = "arn:aws:states:us-east-1:111111111111:stateMachine:mlplatform.test.feature_x.DemoFlow"
POLICY = core.Policy(factor=3, min_minutes=30, min_history=5)


def job(job_id: str, status: str, started_min_ago: float | None, ran_min: float | None = None,
        name: str = "SFN-DemoFlow--train--", **extra) -> object:
    """A ListJobs summary: createdAt, startedAt, stoppedAt in epoch ms, no tags."""
    item = {"jobId": job_id, "jobName": name, "status": status, "jobArn": f"arn:aws:batch:::job/{job_id}",
            "createdAt": to_epoch_ms(NOW - timedelta(minutes=(started_min_ago or 0) + 1)),
            "jobDefinition": "arn:aws:batch:us-east-1:111111111111:job-definition/metaflow_ab12:3", **extra}
    if started_min_ago is not None:
        item["startedAt"] = to_epoch_ms(NOW - timedelta(minutes=started_min_ago))
        if ran_min is not None:
            item["stoppedAt"] = to_epoch_ms(NOW - timedelta(minutes=started_min_ago - ran_min))
    return job_from_api(item, "ml-staging")


def execution(name: str, status: str, started_min_ago: float, ran_min: float | None = None, arn: str = ARN):
    item = {"executionArn": arn.replace(":stateMachine:", ":execution:") + f":{name}", "name": name,
            "stateMachineArn": arn, "status": status, "startDate": NOW - timedelta(minutes=started_min_ago)}
    if ran_min is not None:
        item["stopDate"] = item["startDate"] + timedelta(minutes=ran_min)
    return execution_from_api(item)


def history(minutes: list[float], first_ago: float = 600) -> list:
    return [job(f"done-{i}", "SUCCEEDED", first_ago - i, m) for i, m in enumerate(minutes)]


def test_the_key_is_the_flow_and_step_from_the_name_or_the_tags():
    assert core.job_key(job("a", "RUNNING", 5)) == "DemoFlow/train"
    tagged = job("b", "RUNNING", 5, name="custom-name",
                 tags={"metaflow.flow_name": "ScoringFlow", "metaflow.step_name": "score"})
    assert core.job_key(tagged) == "ScoringFlow/score"
    assert core.job_key(job("c", "RUNNING", 5, name="backfill-2026-12-01")) is None  # not a Metaflow task


def test_p95_is_a_duration_a_run_really_took():
    assert core.p95([float(m) for m in range(1, 41)]) == 38.0  # nearest rank: ceil(0.95 * 40) = 38th
    assert core.p95([7.0]) == 7.0
    assert core.p95([5.0, 1.0, 3.0]) == 5.0
    with pytest.raises(ValueError):
        core.p95([])


def test_history_counts_only_succeeded_runs_in_the_window():
    jobs = [*history([20, 25, 22, 24, 21]),
            job("failed", "FAILED", 300, 1),  # died in its first minute: not how long the work takes
            job("old", "SUCCEEDED", 60 * 30, 300),  # stopped 25 h ago: outside the window
            job("running", "RUNNING", 90)]
    usual = core.job_history(jobs, SINCE)
    assert usual == {"DemoFlow/train": core.Usual(25 * 60, 5)}


def test_a_long_running_job_with_history_is_warned_with_how_long_against_usual():
    usual = core.merged_history(core.job_history(history([20, 25, 22, 24, 21] * 8), SINCE), {})
    running = core.running_jobs([job("slow", "RUNNING", 130), job("fine", "RUNNING", 40)])
    long, thin = core.judge(running, usual, POLICY, NOW)
    assert [r.run.id for r in long] == ["slow"] and thin == []
    assert core.how_long(long[0]) == "running 2h10m, usually 25m (p95 of 40 runs)"


def test_thin_history_is_not_judged_and_says_how_much_it_lacked():
    usual = core.merged_history(core.job_history(history([20, 25, 22]), SINCE), {})
    running = core.running_jobs([job("slow", "RUNNING", 600), job("other", "RUNNING", 600, name="SFN-DemoFlow--end--")])
    long, thin = core.judge(running, usual, POLICY, NOW)
    assert long == []
    assert [(t.run.key, t.runs, t.needed) for t in thin] == [("DemoFlow/train", 3, 5), ("DemoFlow/end", 0, 5)]
    assert core.thin_summary(thin, "staging") == ["staging DemoFlow/train: 3 of 5 succeeded runs",
                                                  "staging DemoFlow/end: 0 of 5 succeeded runs"]


def test_exactly_the_threshold_is_not_long_a_minute_past_it_is():
    usual = {core.history_key(core.JOB, "DemoFlow/train"): core.Usual(20 * 60, 5)}
    at = core.running_jobs([job("at", "RUNNING", 60)])  # 3 x 20m exactly
    past = core.running_jobs([job("past", "RUNNING", 61)])
    assert core.judge(at, usual, POLICY, NOW)[0] == []
    assert [r.run.id for r in core.judge(past, usual, POLICY, NOW)[0]] == ["past"]


def test_min_minutes_is_a_floor_under_short_steps():
    usual = {core.history_key(core.JOB, "DemoFlow/start"): core.Usual(60, 10)}  # usually a minute
    running = core.running_jobs([job("29", "RUNNING", 29, name="SFN-DemoFlow--start--"),
                                 job("30", "RUNNING", 30, name="SFN-DemoFlow--start--")])
    long, _ = core.judge(running, usual, POLICY, NOW)
    assert [r.run.id for r in long] == ["30"]  # 29 minutes is 29 x usual, still under the floor


def test_an_execution_is_judged_against_its_state_machine_not_a_step():
    finished = [execution(f"ok-{i}", "SUCCEEDED", 600 - i * 10, 40) for i in range(6)]
    finished.append(execution("boom", "FAILED", 200, 2))
    usual = core.merged_history(core.job_history(history([1] * 10), SINCE), core.execution_history(finished, SINCE))
    assert usual["execution:mlplatform.test.feature_x.DemoFlow"] == core.Usual(40 * 60, 6)
    running = core.running_executions([execution("hung", "RUNNING", 125), execution("new", "RUNNING", 100)])
    long, thin = core.judge(running, usual, POLICY, NOW)
    assert [r.run.name for r in long] == ["hung"] and thin == []  # 125 > 3 x 40, 100 is not
    assert long[0].run.kind == core.EXECUTION
    message = core.long_run_message(long[0], core.Where("staging", "us-east-1", "https://mf.example.com", "alice",
                                                        owners={"alice": "U0ALICE"}))
    assert "running 2h5m, usually 40m (p95 of 6 runs)" in message.text and "<@U0ALICE>" in message.text
    urls = [e["url"] for e in message.blocks[2]["elements"]]
    assert urls[0].endswith("#/v2/executions/details/" + long[0].run.id)
    assert urls[1] == "https://mf.example.com/DemoFlow/sfn-hung"


def test_a_job_message_links_the_batch_console_and_the_metaflow_task():
    usual = {core.history_key(core.JOB, "DemoFlow/train"): core.Usual(25 * 60, 40)}
    [long], _ = core.judge(core.running_jobs([job("j-1", "RUNNING", 130)]), usual, POLICY, NOW)
    message = core.long_run_message(long, core.Where("production", "us-east-1", "https://mf.example.com", "bob",
                                                     run_id="run-7"))
    assert "step train of DemoFlow" in message.text and "Owner: bob" in message.text
    urls = [e["url"] for e in message.blocks[2]["elements"]]
    assert urls == ["https://us-east-1.console.aws.amazon.com/batch/home?region=us-east-1#jobs/detail/j-1",
                    "https://mf.example.com/DemoFlow/sfn-run-7/train/j-1"]


def test_staging_names_are_escaped():
    usual = {core.history_key(core.EXECUTION, "evil<!channel>"): core.Usual(60, 40)}
    arn = ARN.replace("mlplatform.test.feature_x.DemoFlow", "evil<!channel>")
    [long], _ = core.judge(core.running_executions([execution("x&<y>", "RUNNING", 60, arn=arn)]), usual, POLICY, NOW)
    message = core.long_run_message(long, core.Where("staging", "us-east-1", "https://mf", "<@everyone>"))
    sent = message.text + json.dumps([b for b in message.blocks if b["type"] == "section"])
    assert "<!channel>" not in sent and "<@everyone>" not in sent and "x&amp;&lt;y&gt;" in sent


def test_each_long_run_is_warned_once_and_forgotten_when_it_stops():
    usual = {core.history_key(core.JOB, "DemoFlow/train"): core.Usual(60, 40)}
    running = core.running_jobs([job("a", "RUNNING", 45), job("b", "RUNNING", 50)])
    long, _ = core.judge(running, usual, POLICY, NOW)
    first = core.plan_warnings(long, [r.id for r in running], warned=set())
    assert [r.run.id for r in first.warn] == ["a", "b"]
    again = core.plan_warnings(long, [r.id for r in running], warned={"a", "b"})
    assert again.warn == () and again.warned_after == {"a", "b"}
    later = core.plan_warnings([x for x in long if x.run.id == "b"], ["b"], warned={"a", "b"})
    assert later.warn == () and later.warned_after == {"b"}  # a finished: forgotten


def test_history_is_read_again_only_when_due_and_survives_a_round_trip():
    every = timedelta(minutes=60)
    assert core.history_due(None, NOW, every)
    assert not core.history_due(NOW - timedelta(minutes=59), NOW, every)
    assert core.history_due(NOW - timedelta(minutes=60), NOW, every)
    usual = {"job:DemoFlow/train": core.Usual(1500.0, 40), "execution:x.DemoFlow": core.Usual(2400.0, 6)}
    assert core.load_history(json.loads(json.dumps(core.dump_history(NOW, usual)))) == (NOW, usual)
    assert core.load_history({"usual": {"k": "not a pair"}}) == (None, {})
    assert core.load_history(None) == (None, {})


def test_the_cursor_round_trips_and_a_broken_one_is_empty():
    assert core.load_cursor(core.dump_cursor({"staging": {"b", "a"}})) == {"staging": {"a", "b"}}
    assert core.load_cursor("not json") == {} and core.load_cursor(None) == {}


def test_the_owner_is_read_from_a_metaflow_definition():
    definition = json.dumps({"States": {"start": {"Parameters": {"Parameters": {"metaflow.owner": "alice"}}}}})
    assert owner_from_definition(definition) == "alice"
    assert owner_from_definition("{}") is None and owner_from_definition("not json") is None
