"""Exactly once, black-box: Slack (the sink) accepts a post and the posting process is killed
(SIGKILL) before it reads the answer; the run is marked failed, as run monitoring does, and
re-executed. The re-execution must not post again, and must post what never reached Slack.

The run under test is `dagster job execute` in its own process, started through a gate that
execs it under the pid the sink's fault names (so the fault is armed before anything can post).
Counted from the sink's own messages, through the real slack_sdk client.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from slack_sdk import WebClient

from platform_ops.code_location import build_defs
from platform_ops.sandbox.server import SANDBOX_TOKEN
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS
from platform_ops.settings import SETTINGS_ENV_VAR, load_settings

OOM = {"fault": "oom", "step": "train", "index": 0}
DAGSTER = Path(sys.executable).with_name("dagster")
GATE = "import os, sys; sys.stdin.readline(); os.execv(sys.argv[1], sys.argv[1:])"  # same pid, after the go


def alert_job():
    """The alert job as the code location builds it (reconstructable, for re-execution)."""
    return build_defs(load_settings()).resolve_job_def("alert_failed_executions")


def reap_job():
    return build_defs(load_settings()).resolve_job_def("reap_stuck_jobs")


@pytest.fixture
def home(tmp_path, monkeypatch, world):
    """A Dagster instance on disk (shared with the subprocess) and settings for quick posts:
    no pacing, no op retries (the process dies anyway), every environment polled, dry-run reaps
    (so a re-executed reap would report again if nothing stopped it)."""
    raw = yaml.safe_load(SANDBOX_SETTINGS.read_text())
    raw["alerts"].update(post_interval_seconds=0, retries=0, retry_delay_seconds=0)
    raw["reaper"]["dry_run"] = True
    for env in raw["environments"].values():
        env["events_queue"] = None
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(raw))
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(settings))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


def killed_run(world, instance, job: str, run_config: dict, fault: dict, tmp_path: Path) -> dg.DagsterRun:
    """`dagster job execute` in its own process; the sink applies `fault` to it (kill it when a
    matching post is accepted, or as it arrives). Returns its run, marked failed."""
    config = tmp_path / "run_config.json"
    config.write_text(json.dumps(run_config))
    log = tmp_path / "dagster-job-execute.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", GATE, str(DAGSTER), "job", "execute", "-m",
                                 "platform_ops.definitions", "-j", job, "-c", str(config)],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True)
        world.sandbox.sink.state.faults.append({**fault, "pid": proc.pid})
        proc.communicate("go\n", timeout=600)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    [run] = instance.get_runs(limit=1)
    assert run.job_name == job and not run.is_finished  # it died mid-run: nobody marked it
    instance.report_run_failed(run)  # what run monitoring does for a dead run worker
    return run


def reexecute(instance, target, run: dg.DagsterRun) -> dg.JobExecutionResult:
    result = dg.execute_job(dg.reconstructable(target), instance=instance,
                            reexecution_options=dg.ReexecutionOptions(parent_run_id=run.run_id))
    assert result.success
    return result


def results(result) -> dict:
    """The last attempt's results (an attempt that fails after its output is retried)."""
    *_, event = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return event.event_specific_data.metadata["results"].value


def alert_config(world, instance) -> dict:
    """What failed_executions_sensor requests for the failures in the sandbox."""
    defs = build_defs(load_settings())
    sensor = defs.resolve_sensor_def("failed_executions_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
        [request] = sensor.evaluate_tick(ctx).run_requests
    return request.run_config


def messages(world) -> list[dict]:
    return list(world.sandbox.sink.state.messages)


def chatter(world, count: int) -> None:
    """Other people talk in the channel after the crash: the lookup has to page past them."""
    client = WebClient(token=SANDBOX_TOKEN, base_url=world.sandbox.sink.api_url)
    for i in range(count):
        client.chat_postMessage(channel=world.settings.slack.channel, text=f"someone else {i}")


def test_an_alert_slack_took_before_the_poster_died_is_not_posted_again(world, home, tmp_path):
    world.run_flow("staging", "killed-after-post", width=1, faults=[OOM])
    config = alert_config(world, home)
    run = killed_run(world, home, "alert_failed_executions", config,
                     {"kind": "accept_and_kill", "when": {"event_type": "platform_ops_alert"}}, tmp_path)
    [alert] = messages(world)
    payload = alert["metadata"]["event_payload"]
    assert "killed-after-post" in alert["text"] and payload["kind"] == "execution"
    assert payload["execution_arn"].endswith(":killed-after-post")
    chatter(world, 250)  # more than a history page
    again = reexecute(home, alert_job, run)
    assert results(again) == {"announced (found in Slack)": 1}
    assert [m["text"] for m in messages(world)].count(alert["text"]) == 1 and len(messages(world)) == 1 + 250
    third = reexecute(home, alert_job, home.get_run_by_id(again.run_id))
    assert results(third) == {"already announced": 1} and len(messages(world)) == 1 + 250
    assert SANDBOX_TOKEN not in json.dumps(messages(world))


def test_an_alert_that_never_reached_slack_is_posted_by_the_re_execution(world, home, tmp_path):
    """The claim was written, the poster died with its request in flight: the lookup finds
    nothing and the re-execution posts, once."""
    world.run_flow("staging", "killed-before-post", width=1, faults=[OOM])
    run = killed_run(world, home, "alert_failed_executions", alert_config(world, home), {"kind": "kill"}, tmp_path)
    assert messages(world) == []
    assert results(reexecute(home, alert_job, run)) == {"announced": 1}
    [alert] = messages(world)
    assert "killed-before-post" in alert["text"]


@pytest.mark.parametrize("kind, thread, skip, kept", [("accept_and_kill", False, 0, 1), ("accept_and_kill", True, 2, 4),
                                                       ("kill", True, 2, 3)],
                         ids=["digest kept", "third reply kept", "third reply never arrived"])
def test_a_storm_killed_mid_way_ends_as_one_digest_with_each_reply_once_under_it(world, home, tmp_path, kind, thread,
                                                                                skip, kept):
    names = [f"storm-{i}" for i in range(6)]  # digest_threshold is 5
    for name in names:
        world.run_flow("staging", name, width=1, faults=[OOM])
    run = killed_run(world, home, "alert_failed_executions", alert_config(world, home),
                     {"kind": kind, "when": {"event_type": "platform_ops_alert", "thread": thread}, "skip": skip},
                     tmp_path)
    assert len(messages(world)) == kept  # the digest, and the replies before the kill
    result = reexecute(home, alert_job, run)
    digest, *replies = messages(world)
    assert digest["text"].startswith("6 Metaflow runs failed") and digest["thread_ts"] is None
    assert len(replies) == 6 and {r["thread_ts"] for r in replies} == {digest["ts"]}
    assert sorted(n for r in replies for n in names if f"{n})" in r["text"]) == names  # each once
    counts = results(result)
    # the storm is one state machine's: its first reply opens the incident, the rest reply in the
    # same (the digest's) thread as further failures
    found = sum(v for k, v in counts.items() if k.endswith("(found in Slack)"))
    assert found == (1 if kept == 4 else 0)
    assert sum(v for k, v in counts.items() if k.startswith("announced")) + counts.get("already announced", 0) == 6


def test_a_reaper_report_slack_took_before_the_poster_died_is_not_posted_again(world, home, tmp_path):
    """Dry run: the re-execution decides the same and would report again, but for the ledger."""
    stuck = world.stuck("staging", count=2)
    config = {"ops": {"reap": {"config": {"environment": "staging", "queue": "ml-staging", "job_ids": stuck}}}}
    run = killed_run(world, home, "reap_stuck_jobs", config,
                     {"kind": "accept_and_kill", "when": {"text_contains": "Reaper"}}, tmp_path)
    [report] = messages(world)
    assert report["metadata"]["event_payload"]["kind"] == "reaper_report"
    result = reexecute(home, reap_job, run)
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert event.event_specific_data.metadata["slack_report"].value == "sent"
    assert messages(world) == [report]


# -- a lost answer in a live process: looked up before the post is tried again ---------------

def tick(defs, instance, cursor=None):
    sensor = defs.resolve_sensor_def("failed_executions_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        return sensor.evaluate_tick(ctx)


def run_alert(defs, request, instance):
    return defs.resolve_job_def("alert_failed_executions").execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags)


@pytest.mark.parametrize("kind", ["accept_and_drop", "accept_and_500"])
def test_a_post_slack_kept_without_answering_ok_is_found_not_posted_again(world, home, kind):
    """The connection drops after the request went out, or a gateway answers 500 although Slack
    kept the post: never retried blind, found by its metadata within the same attempt (no op
    retries in these settings)."""
    world.run_flow("staging", "lost-answer", width=1, faults=[OOM])
    defs = build_defs(load_settings())
    [request] = tick(defs, home).run_requests
    world.sandbox.sink.state.faults.append({"kind": kind})
    result = run_alert(defs, request, home)
    assert result.success and results(result) == {"announced (found in Slack)": 1}
    [alert] = messages(world)
    assert "lost-answer" in alert["text"] and world.sandbox.sink.state.faults == []


def test_a_recovery_whose_answer_was_lost_is_posted_once_in_the_failures_thread(world, home):
    world.run_flow("staging", "broke", width=1, faults=[OOM])
    defs = build_defs(load_settings())
    first = tick(defs, home)
    assert run_alert(defs, first.run_requests[0], home).success
    world.run_flow("staging", "mended", width=1)
    [request] = tick(defs, home, cursor=first.cursor).run_requests
    world.sandbox.sink.state.faults.append({"kind": "accept_and_drop", "when": {"thread": True}})
    assert run_alert(defs, request, home).success
    failure, recovery = messages(world)
    assert recovery["thread_ts"] == failure["ts"] and "Recovered" in recovery["text"]
    assert recovery["metadata"]["event_payload"]["kind"] == "recovery" and world.sandbox.sink.state.faults == []


def test_a_run_failure_report_whose_answer_was_lost_is_posted_once(world, home):
    defs = build_defs(load_settings())
    failed = defs.resolve_job_def("reap_stuck_jobs").execute_in_process(
        run_config={"ops": {"reap": {"config": {"environment": "nowhere", "queue": "q", "job_ids": ["x"]}}}},
        instance=home, raise_on_error=False)
    failure_event = next(e for e in home.all_logs(failed.run_id) if e.dagster_event and
                         e.dagster_event.event_type_value == "PIPELINE_FAILURE").dagster_event
    sensor = defs.resolve_sensor_def("platform_ops_run_failure_sensor")

    def evaluate():
        ctx = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=failure_event,
                                                 dagster_instance=home, dagster_run=home.get_run_by_id(failed.run_id),
                                                 resources=defs.resources).for_run_failure()
        sensor(ctx)

    world.sandbox.sink.state.faults.append({"kind": "accept_and_500"})
    evaluate()
    evaluate()  # the daemon evaluating the same failure again
    [report] = messages(world)
    assert report["text"].startswith("platform-ops job reap_stuck_jobs failed")
