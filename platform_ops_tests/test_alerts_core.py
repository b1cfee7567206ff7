"""Alert decisions on histories shaped like Step Functions returns them for Metaflow runs."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from platform_ops.alerts import core
from platform_ops.messages import MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS, MAX_TEXT_CHARS
from platform_ops.observations import Execution

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
SM = "arn:aws:states:us-east-1:222222222222:stateMachine:mlplatform.prod.DemoFlow"
FLOWS = Path(__file__).resolve().parents[1] / "platform_ops" / "sandbox" / "metaflow"


def execution(name="e4ecf027", status="FAILED", minutes=7, error="States.TaskFailed", cause=""):
    return Execution(arn=f"arn:aws:states:us-east-1:222222222222:execution:mlplatform.prod.DemoFlow:{name}",
                     name=name, state_machine_arn=SM, status=status, started_at=T0,
                     stopped_at=T0 + timedelta(minutes=minutes), error=error, cause=cause)


def job(job_id, step="train", exit_code=1, reason=None, status_reason="Essential container in task exited", attempts=3):
    container = {"ExitCode": exit_code, "LogStreamName": f"metaflow_0123abcd/default/{job_id}"}
    if reason:
        container["Reason"] = reason
    if exit_code is None:
        container.pop("ExitCode")
    return {
        "JobArn": f"arn:aws:batch:us-east-1:222222222222:job/{job_id}", "JobId": job_id,
        "JobName": f"SFN-DemoFlow--{step}--", "JobQueue": "arn:aws:batch:us-east-1:222222222222:job-queue/ml-production",
        "Status": "FAILED", "StatusReason": status_reason,
        "Attempts": [{"Container": dict(container), "StatusReason": status_reason} for _ in range(attempts)],
        "Container": container,
        "Parameters": {"metaflow.owner": "alice", "metaflow.flow_name": "DemoFlow", "metaflow.step_name": step,
                       "metaflow.run_id": "e4ecf027"},
    }


class History:
    """Builds events with ids and previousEventId chains, as GetExecutionHistory returns them."""

    def __init__(self):
        self.events = []
        self.add("ExecutionStarted", None, executionStartedEventDetails={"input": "{}"})

    def add(self, kind, previous, **details):
        event = {"id": len(self.events) + 1, "previousEventId": previous or 0, "type": kind,
                 "timestamp": T0 + timedelta(seconds=len(self.events)), **details}
        self.events.append(event)
        return event["id"]

    def task(self, state, step, previous, outcome=None):
        """TaskStateEntered -> TaskScheduled -> TaskSubmitted [-> TaskFailed(cause)]."""
        entered = self.add("TaskStateEntered", previous, stateEnteredEventDetails={"name": state})
        params = {"JobName": f"SFN-DemoFlow--{step}--", "Parameters": {"metaflow.step_name": step,
                                                                       "metaflow.owner": "alice",
                                                                       "metaflow.flow_name": "DemoFlow"}}
        scheduled = self.add("TaskScheduled", entered, taskScheduledEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync", "parameters": json.dumps(params)})
        started = self.add("TaskStarted", scheduled, taskStartedEventDetails={"resourceType": "batch"})
        job_id = f"{step}-{len(self.events):04}"
        submitted = self.add("TaskSubmitted", started, taskSubmittedEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync",
            "output": json.dumps({"JobId": job_id, "JobName": f"SFN-DemoFlow--{step}--"})})
        if outcome is None:
            return self.add("TaskSucceeded", submitted, taskSucceededEventDetails={"resourceType": "batch"}), job_id
        cause = outcome(job_id) if callable(outcome) else outcome
        return self.add("TaskFailed", submitted, taskFailedEventDetails={
            "resourceType": "batch", "resource": "submitJob.sync", "error": "States.TaskFailed",
            "cause": cause if isinstance(cause, str) else json.dumps(cause)}), job_id


def foreach_history(outcomes):
    """start, then a Map over train with one iteration per outcome; failures roll up."""
    h = History()
    last, _ = h.task("start", "start", 1)
    map_entered = h.add("MapStateEntered", last, stateEnteredEventDetails={"name": "*train"})
    started = h.add("MapStateStarted", map_entered, mapStateStartedEventDetails={"length": len(outcomes)})
    ends = []
    for i, outcome in enumerate(outcomes):
        it = h.add("MapIterationStarted", started, mapIterationStartedEventDetails={"name": "*train", "index": i})
        end, _ = h.task("train", "train", it, outcome)
        ends.append((end, outcome))
    failed_at = None
    for end, outcome in ends:
        if outcome is not None:
            it_failed = h.add("MapIterationFailed", end, mapIterationFailedEventDetails={"name": "*train"})
            if failed_at is None:
                failed_at = h.add("MapStateFailed", it_failed)
                h.add("ExecutionFailed", failed_at, executionFailedEventDetails={
                    "error": "States.TaskFailed", "cause": h.events[end - 1]["taskFailedEventDetails"]["cause"]})
    return h.events


def test_scan_keeps_what_stopped_after_the_cursor():
    since = T0 + timedelta(minutes=5)
    runs = [execution("old", minutes=4), execution("new", minutes=9), execution("ok", "SUCCEEDED", 8),
            execution("late", "TIMED_OUT", 12), Execution("x", "running", SM, "RUNNING", T0)]
    failed, succeeded, newest = core.scan(runs, since)
    assert [e.name for e in failed] == ["new", "late"]
    assert [e.name for e in succeeded] == ["ok"]
    assert newest == T0 + timedelta(minutes=12)
    assert core.scan([], since) == ([], [], since)


@pytest.mark.parametrize("job_json, category, reason", [
    (job("a", status_reason="platform-ops reaper: RUNNABLE for 2h14m > 2h0m (MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT)",
         exit_code=None, attempts=0), core.REAPED, "cancelled by platform-ops after 2h14m in RUNNABLE"),
    (job("b", exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage"), core.OOM, "out of memory"),
    (job("c", exit_code=None, status_reason="Host EC2 (instance i-0a1b2c3d) terminated."), core.SPOT, "spot/host reclaimed"),
    (job("d", exit_code=None, status_reason="Job attempt duration exceeded timeout"), core.TIMEOUT, "Batch timeout"),
    (job("e", exit_code=2), core.EXIT, "exit 2"),
    (job("f", exit_code=None, status_reason="CannotPullContainerError: pull access denied"), core.UNKNOWN,
     "CannotPullContainerError: pull access denied"),
    ({"JobId": "g"}, core.UNKNOWN, "unknown"),
])
def test_classify(job_json, category, reason):
    assert core.classify(job_json) == (category, reason)


def test_drill_down_a_foreach_with_mixed_failures():
    oom = lambda i: job(i, exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage")  # noqa: E731
    events = foreach_history([None, oom, lambda i: job(i, exit_code=1), oom, None])
    incident = core.drill_down(execution(), events, "production")
    assert (incident.flow, incident.owner, incident.run_id) == ("DemoFlow", "alice", "sfn-e4ecf027")
    steps = {s.name: s for s in incident.steps}
    assert (steps["start"].submitted, steps["start"].failed) == (1, 0)
    assert (steps["train"].submitted, steps["train"].failed) == (5, 3)
    assert steps["train"].reasons == (("out of memory", 2), ("exit 1", 1))
    assert core.step_line(steps["train"]) == "• `train`: 3 of 5 failed: 2 out of memory, 1 exit 1"
    assert (incident.submitted, incident.failed) == (6, 3)
    first = incident.first_failure
    assert first.step == "train" and first.log_stream.endswith(first.job_id) and first.attempts == 3
    assert incident.execution_error == ""  # Batch explains it


def test_tied_reasons_are_listed_in_name_order():
    """What the e2e drill-down shows when both injected faults of its Map are in the history."""
    oom = lambda i: job(i, exit_code=137, reason="OutOfMemoryError: Container killed due to memory usage")  # noqa: E731
    events = foreach_history([None, oom, None, lambda i: job(i, exit_code=1)])
    incident = core.drill_down(execution(), events, "production")
    assert (incident.failed, incident.submitted) == (2, 5)
    assert core.step_line({s.name: s for s in incident.steps}["train"]) == "• `train`: 2 of 4 failed: 1 exit 1, 1 out of memory"


def test_events_after_execution_failed_still_count_and_duplicates_do_not():
    events = foreach_history([lambda i: job(i, exit_code=1)])
    h = History()
    h.events = list(events)
    late, job_id = h.task("train", "train", 1, lambda i: job(i, exit_code=137))  # a still-running iteration ends later
    h.events.append({**h.events[late - 1], "id": late + 1})  # the same TaskFailed delivered twice
    incident = core.drill_down(execution(), h.events, "production")
    assert {s.name: s.failed for s in incident.steps}["train"] == 2


def test_a_cause_that_is_not_json_is_reported_not_dropped():
    events = foreach_history(["A cause message"])
    incident = core.drill_down(execution(), events, "production")
    [failure] = incident.failures
    assert failure.category == core.UNKNOWN and "A cause message" in failure.reason and failure.step == "train"


def test_missing_fields_do_not_break_the_drill_down():
    h = History()
    h.add("TaskFailed", 1, taskFailedEventDetails={"resourceType": "batch", "cause": json.dumps({"JobId": "x"})})
    h.add("TaskSubmitted", 1, taskSubmittedEventDetails={"resourceType": "batch"})
    incident = core.drill_down(execution(), h.events, "staging")
    assert incident.failures[0].job_id == "x" and incident.failures[0].category == core.UNKNOWN
    assert incident.flow == "DemoFlow"  # from the state machine name


@pytest.mark.parametrize("status, kind, details, expected", [
    ("FAILED", "ExecutionFailed", {"error": "States.Runtime", "cause": "An error occurred while executing the state 'join'"},
     "States.Runtime"),
    ("TIMED_OUT", "ExecutionTimedOut", {}, "States.Timeout"),
    ("ABORTED", "ExecutionAborted", {}, "aborted"),
])
def test_execution_level_failures_without_a_batch_job(status, kind, details, expected):
    h = History()
    h.task("start", "start", 1)
    key = {"ExecutionFailed": "executionFailedEventDetails", "ExecutionTimedOut": "executionTimedOutEventDetails",
           "ExecutionAborted": "executionAbortedEventDetails"}[kind]
    h.add(kind, len(h.events), **{key: details})
    incident = core.drill_down(execution(status=status, error=""), h.events, "production")
    assert incident.failures == () and incident.execution_error == expected
    message = core.render_incident(incident, core.Links("https://mf"))
    assert expected in json.dumps(message.blocks)


def test_owner_comes_from_the_definition_when_the_history_has_none():
    definition = (FLOWS / "sm_prod_full.json").read_text()
    assert core.owner_from_definition(definition) == "alice"
    assert core.owner_from_definition("not json") is None
    incident = core.drill_down(execution(), History().events, "production", definition)
    assert incident.owner == "alice"


def _incident(n_failed=300, steps=1, log=True):
    outcomes = [lambda i: job(i, exit_code=137, reason="OutOfMemoryError")] * n_failed + [None] * 3
    incident = core.drill_down(execution(), foreach_history(outcomes), "production")
    if steps > 1:  # many steps, each failing
        import dataclasses
        many = tuple(core.StepSummary(f"step_{i}", 10, 1 + i % 3, (("exit 1", 1), ("out of memory", i % 3)))
                     for i in range(steps))
        incident = dataclasses.replace(incident, steps=many)
    return incident


def _assert_within_limits(message):
    assert len(message.blocks) <= MAX_BLOCKS
    for block in message.blocks:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= MAX_HEADER_CHARS
        if block["type"] == "section":
            assert len(block.get("text", {}).get("text", "")) <= MAX_SECTION_CHARS
            assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
            assert block.get("text", {}).get("text", "").count("```") % 2 == 0  # no cut mid-markup


def test_the_message_says_what_why_whose_and_where():
    links = core.Links("https://metaflow.example.com", "http://dagster/runs/r1", {"alice": "U0ALICE"})
    message = core.render_incident(_incident(3), links, ["step 1", "Traceback (most recent call last):", "MemoryError"])
    _assert_within_limits(message)
    body = json.dumps(message.blocks)
    assert message.blocks[0]["text"]["text"] == ":red_circle: DemoFlow failed in production"
    assert "*Failed tasks*\\n3 of 7" in body and "<@U0ALICE>" in body and "*Duration*\\n7m" in body
    assert "`train`: 3 of 6 failed: 3 out of memory" in body
    assert "MemoryError" in body and "```" in body
    urls = [e["url"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    assert urls[0] == "https://metaflow.example.com/DemoFlow/sfn-e4ecf027"
    assert urls[1].startswith("https://metaflow.example.com/DemoFlow/sfn-e4ecf027/train/train-") and "attempt=2" in urls[1]
    assert urls[2].startswith("https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/")
    assert urls[3] == "http://dagster/runs/r1"
    assert message.text.startswith(
        "DemoFlow failed in production (sfn-e4ecf027): 3 of 7 tasks failed (out of memory). Owner: <@U0ALICE>")


def test_an_unknown_owner_is_named_in_plain_text():
    message = core.render_incident(_incident(1), core.Links("https://mf", owners={"bob": "U0BOB"}))
    assert "*Owner*\\nalice" in json.dumps(message.blocks) and "<@" not in json.dumps(message.blocks)


def test_huge_incidents_stay_within_slack_limits():
    log = [f"line {i} " + "x" * 200 + " ```" for i in range(200)]
    _assert_within_limits(core.render_incident(_incident(300, steps=40), core.Links("https://mf"), log))
    digest = core.render_digest([_incident(2)] * 80, core.Links("https://mf"))
    _assert_within_limits(digest)
    assert digest.blocks[0]["text"]["text"] == ":rotating_light: 80 Metaflow runs failed"


def test_a_huge_error_and_cause_cost_nothing_but_their_tail():
    """A Batch job's statusReason can be kilobytes (the fault suite's oversized scenario): the
    notification text stays under Slack's limit, the blocks within theirs."""
    huge = job("j-huge", exit_code=1, status_reason="x " * 40_000)
    incident = core.drill_down(execution(error="E" * 5000, cause="c" * 80_000), foreach_history([huge]), "staging")
    message = core.render_incident(incident, core.Links("https://mf"))
    _assert_within_limits(message)
    assert len(message.text) <= MAX_TEXT_CHARS and message.text.startswith("DemoFlow failed in staging")


def test_recovery_and_run_failure_messages():
    ok = execution("r2", status="SUCCEEDED", error="")
    recovery = core.render_recovery(ok, "DemoFlow", core.Links("https://mf"))
    assert "Recovered: DemoFlow run <https://mf/DemoFlow/sfn-r2|sfn-r2> succeeded at 09:07 UTC" in recovery.text
    failure = core.render_run_failure("reap_stuck_jobs", "abcdef12-3456", "boom ``` here", "http://d/runs/abcdef12")
    _assert_within_limits(failure)
    assert "reap_stuck_jobs" in failure.text


def test_announced_outcomes_keep_their_words():
    assert core.announced(in_thread=False, found=False) == "announced"
    assert core.announced(in_thread=True, found=False) == "announced in digest thread"
    assert core.announced(in_thread=False, found=True) == "announced (found in Slack)"
    assert core.announced(in_thread=True, found=True) == "announced in digest thread (found in Slack)"
    assert core.ANNOUNCED == {core.announced(t, f) for t in (False, True) for f in (False, True)} | {
        core.Outcome.ANNOUNCED_IN_STREAK, core.Outcome.FOUND_IN_STREAK, core.Outcome.REMINDED, core.Outcome.IN_REAP_REPORT}
    assert "already announced" not in core.ANNOUNCED and core.Outcome.RECOVERY_ANNOUNCED not in core.ANNOUNCED


# ---- the plans: what a tick requests, what a run sends ----

STAGING_SM = "arn:aws:states:us-east-1:111111111111:stateMachine:mlplatform.test.DemoFlow"


def ref(ex):
    return core.Ref("production", ex.arn, ex.state_machine_arn)


def test_a_success_is_a_recovery_candidate_only_after_the_last_failure():
    failed, _, _ = core.scan([execution("f1", minutes=3), execution("f2", minutes=6)], T0)
    later, earlier = execution("ok-late", "SUCCEEDED", 9), execution("ok-early", "SUCCEEDED", 5)
    found = core.candidates("production", failed, [earlier, later])
    assert [r.execution_arn.rsplit(":", 1)[-1] for r in found.failures] == ["f1", "f2"]
    assert [r.execution_arn.rsplit(":", 1)[-1] for r in found.successes] == ["ok-late"]
    assert core.candidates("production", failed, [earlier]).successes == []
    assert [r.environment for r in core.candidates("staging", [], [earlier]).successes] == ["staging"]


def test_events_are_decided_per_state_machine_of_the_environment_only():
    other = dataclasses.replace(execution("elsewhere"), state_machine_arn=STAGING_SM,
                                arn=execution("elsewhere").arn.replace("mlplatform.prod", "mlplatform.test"))
    seen = [execution("f1", minutes=3), execution("ok", "SUCCEEDED", 2), other]
    found = core.from_events("production", ["mlplatform.prod."], seen)
    assert [r.execution_arn for r in found.failures] == [execution("f1").arn]
    assert found.successes == []  # it succeeded before the failure
    assert core.from_events("production", ["nothing."], seen) == core.Candidates()


def test_a_run_is_requested_for_failures_and_for_successes_that_recover_something():
    f, ok = ref(execution("f1")), ref(execution("ok", "SUCCEEDED", 9))
    elsewhere = core.Ref("staging", "arn:aws:states:us-east-1:111111111111:execution:mlplatform.test.DemoFlow:ok",
                         STAGING_SM)
    assert core.plan_work([core.Candidates([], [ok])], open_machines=[]) is None  # nothing to recover
    work = core.plan_work([core.Candidates([], [ok, elsewhere])], open_machines=[SM])
    assert work.failures == () and work.recoveries == (ok,)
    work = core.plan_work([core.Candidates([f]), core.Candidates([], [ok])], open_machines=[])
    assert (work.failures, work.recoveries) == ((f,), (ok,))  # failing in the same set
    swapped = core.plan_work([core.Candidates([], [ok]), core.Candidates([f])], open_machines=[])
    assert work.run_key == swapped.run_key and work.run_key.startswith("alert:")
    assert core.plan_work([core.Candidates([f])], []).run_key != work.run_key


def test_the_cursor_carries_what_it_could_not_read_and_only_the_environments_own():
    prod = core.Scope("production", "222222222222", "us-east-1", ("mlplatform.prod.",), event_driven=True)
    shared = core.Scope("other", "222222222222", "us-east-1", ("team.",))  # the same account
    other_sm = "arn:aws:states:us-east-1:222222222222:stateMachine:team.Flow"
    previous = {SM: 1_000, other_sm: 2_000, prod.mark: core.to_epoch_ms(T0)}
    cursor = core.Cursor.loads(json.dumps(previous))
    assert not cursor.due(prod, T0 + timedelta(seconds=599), reconcile_seconds=600)
    assert cursor.next == {SM: 1_000, prod.mark: core.to_epoch_ms(T0)}  # carried, mark and all
    assert cursor.due(shared, T0, 600)  # polled every tick
    cursor.seen(other_sm, T0)
    cursor.unread("arn:aws:states:us-east-1:222222222222:stateMachine:team.New")  # never read: nothing to carry
    assert json.loads(cursor.dumps()) == {SM: 1_000, other_sm: core.to_epoch_ms(T0), prod.mark: core.to_epoch_ms(T0)}

    late = core.Cursor(previous)
    assert late.due(prod, T0 + timedelta(seconds=600), 600) and late.next == {}
    late.keep(prod, mark=False)  # its listing failed: reconcile again next tick
    assert late.next == {SM: 1_000}
    listed = core.Cursor(previous)
    listed.listed(prod, T0 + timedelta(hours=1))
    listed.unread(SM)
    assert listed.next == {prod.mark: core.to_epoch_ms(T0 + timedelta(hours=1)), SM: 1_000}
    assert listed.since(SM, T0) == core.from_epoch_ms(1_000) and listed.since("new", T0) == T0


@pytest.mark.parametrize("step, record, outcome, detail", [
    (core.exactly_once.Step.DONE, {"state": "announced", "ts": "1.2"}, core.Outcome.ALREADY_ANNOUNCED, "1.2"),
    (core.exactly_once.Step.DONE, {"state": "muted", "reason": "x"}, core.Outcome.ALREADY_MUTED, ""),
    (core.exactly_once.Step.DONE, {"ts": "0.5"}, core.Outcome.ALREADY_ANNOUNCED, "0.5"),  # before claims
    (core.exactly_once.Step.BUSY, {"state": "claimed", "run_id": "r9"}, core.Outcome.IN_FLIGHT, "r9"),
])
def test_the_ledger_alone_skips_what_went_out_or_is_in_flight(step, record, outcome, detail):
    result = core.skipped(ref(execution()), step, record)
    assert (result.outcome, result.detail) == (outcome, detail)
    assert str(result.outcome) == result.row()["result"]


def test_what_the_ledger_does_not_skip_is_looked_into():
    assert core.skipped(ref(execution()), core.exactly_once.Step.POST, None) is None
    assert core.skipped(ref(execution()), core.exactly_once.Step.LOOKUP, {"state": "claimed"}) is None


def test_silences_mute_matching_state_machines_until_they_end():
    from platform_ops.settings import Silence

    ex = execution()
    silences = [Silence(state_machine_pattern="mlplatform.test.*", until=T0 + timedelta(days=1), reason="branches"),
                Silence(state_machine_pattern="mlplatform.prod.*", until=T0 + timedelta(hours=1), reason="upgrade")]
    muted = core.screen(ref(ex), ex, silences, now=T0)
    assert isinstance(muted, core.Mute) and muted.reason == "upgrade"
    assert (muted.result.outcome, muted.result.detail) == (core.Outcome.MUTED, "upgrade (until 2026-11-28 10:00)")
    assert core.screen(ref(ex), ex, silences, now=T0 + timedelta(hours=1)) is None  # it ended
    gone = core.screen(ref(ex), None, silences, now=T0)
    assert gone.outcome is core.Outcome.GONE


def _finding(name, n_failed=1):
    ex = execution(name)
    outcomes = [lambda i: job(i, exit_code=137, reason="OutOfMemoryError")] * n_failed + [None]
    return core.Finding(ref(ex), core.drill_down(ex, foreach_history(outcomes), "production"), ["Killed"])


LINKS = core.Links("https://mf", "http://dagster/runs/r1", {"alice": "U0ALICE"})


def test_below_the_threshold_each_execution_is_its_own_message():
    findings = [_finding("a", 2), _finding("b")]
    plan = core.plan_posts(findings, [f.ref for f in findings], LINKS, threshold=2, digest_record=None)
    assert plan.digest is None and [p.key for p in plan.posts] == [f"execution/{execution(n).arn}" for n in "ab"]
    post = plan.posts[0]
    assert post.kind is core.Kind.EXECUTION and not post.in_digest and post.thread_ts is None
    assert post.summary == "2/4 tasks: out of memory" == findings[0].result.detail
    assert findings[0].result.outcome is core.Outcome.TO_ANNOUNCE
    assert "Killed" in json.dumps(post.message.blocks)
    assert dict(post.payload) == {"kind": "execution", "execution_arn": execution("a").arn}
    assert post.opened("9.9") == {"thread_ts": "9.9", "stopped_ms": core.to_epoch_ms(T0 + timedelta(minutes=7)),
                                  "execution": "a"}
    assert core.plan_posts([], [], LINKS, 2, None) == core.Posts(None, ())


def test_a_storm_is_a_digest_first_and_stays_one_for_a_rerun_with_fewer_left():
    findings = [_finding(f"s{i}") for i in range(3)]
    asked = [f.ref for f in findings]
    plan = core.plan_posts(findings, asked, LINKS, threshold=2, digest_record=None)
    assert plan.digest.key == core.digest_key(reversed(asked)) and plan.digest.ref is None
    assert plan.digest.message.text.startswith("3 Metaflow runs failed")
    assert dict(plan.digest.payload) == {"kind": "digest", "executions": 3}
    assert all(p.in_digest for p in plan.posts)
    rerun = core.plan_posts(findings[2:], asked, LINKS, threshold=2, digest_record={"state": "claimed"})
    assert rerun.digest.key == plan.digest.key and rerun.digest.payload["executions"] == 3


def test_the_details_wait_on_the_digest():
    findings = [_finding(f"s{i}") for i in range(3)]
    plan = core.plan_posts(findings, [f.ref for f in findings], LINKS, threshold=2, digest_record=None)
    posts, held = core.after_digest(plan, "posted", "5.5")
    assert held == [] and [p.thread_ts for p in posts] == ["5.5"] * 3
    assert core.delivered(posts[0], "posted", "6.1").outcome is core.Outcome.ANNOUNCED_IN_THREAD
    assert core.after_digest(plan, None, None) == ([], [])  # it failed: the retry sends them
    posts, held = core.after_digest(plan, "busy", None)
    assert posts == []
    assert {(r.outcome, r.detail) for r in held} == {(core.Outcome.IN_FLIGHT, "1/3 tasks: out of memory")}


def test_what_a_post_became():
    post = core.plan_posts([_finding("a")], [], LINKS, 5, None).posts[0]
    assert (core.delivered(post, "posted", "1.1").outcome, core.delivered(post, "posted", "1.1").detail) == (
        core.Outcome.ANNOUNCED, "1.1")
    assert core.delivered(post, "found", "1.1").outcome is core.Outcome.FOUND
    assert core.delivered(post, "already", "1.1").outcome is core.Outcome.ANNOUNCED
    assert core.delivered(post, "busy", None).outcome is core.Outcome.IN_FLIGHT
    assert core.not_sent(post, "HTTP 500").outcome is core.Outcome.NOT_SENT
    ok = execution("ok", "SUCCEEDED", 30)
    recovery = core.plan_recovery(ref(ok), {"thread_ts": "1.1", "stopped_ms": 0}, ok, LINKS)
    assert core.delivered(recovery, "posted", "2.2").outcome is core.Outcome.RECOVERY_ANNOUNCED
    assert core.delivered(recovery, "posted", "2.2").detail == "1.1"
    assert core.delivered(recovery, "busy", None).outcome is core.Outcome.RECOVERY_IN_FLIGHT
    assert core.not_sent(recovery, "x").outcome is core.Outcome.RECOVERY_NOT_SENT


def test_a_recovery_answers_in_the_failures_thread_only_if_it_came_after_it():
    ok = execution("ok", "SUCCEEDED", 30)
    opened = {"thread_ts": "1.1", "stopped_ms": core.to_epoch_ms(T0 + timedelta(minutes=7)), "execution": "f"}
    post = core.plan_recovery(ref(ok), opened, ok, LINKS)
    assert (post.key, post.kind, post.thread_ts, post.label) == (f"recovery/{ok.arn}", core.Kind.RECOVERY, "1.1",
                                                                 "recovery ok")
    assert "Recovered: DemoFlow in production run" in post.message.text
    assert core.plan_recovery(ref(ok), None, ok, LINKS).outcome is core.Outcome.RECOVERY_NOTHING_OPEN
    assert core.plan_recovery(ref(ok), opened, None, LINKS).outcome is core.Outcome.GONE
    same = execution("same", "SUCCEEDED", 7)
    assert core.plan_recovery(ref(same), opened, same, LINKS).outcome is core.Outcome.RECOVERY_OLDER


def test_the_report_keeps_the_last_word_on_each_execution_in_the_order_asked():
    a, b = _finding("a"), _finding("b")
    report = core.Report()
    report.record(a.result, b.result, core.Result(ref(execution("m")), core.Outcome.MUTED, "why"))
    post_a, post_b = core.plan_posts([a, b], [], LINKS, 5, None).posts
    report.record(core.delivered(post_a, "posted", "1.1"))
    report.failed(post_b, "chat.postMessage to #alerts: HTTP 500")
    assert report.counts == {"announced": 1, "not sent": 1, "muted": 1}
    assert report.announced == 1 and report.errors == ["b: chat.postMessage to #alerts: HTTP 500"]
    assert [r["execution"] for r in report.rows] == ["a", "b", "m"]
    assert report.rows[0] == {"execution": "a", "environment": "production",
                              "state_machine": "mlplatform.prod.DemoFlow", "result": "announced", "detail": "1.1"}
    report.failed(core.Post("digest/x", core.Kind.DIGEST, post_a.message, "digest"), "down")
    assert report.errors[-1] == "digest: down" and len(report.results) == 3


@pytest.mark.parametrize("wiring", ["alerts/defs.py", "events/defs.py"])
def test_the_wiring_stays_thin(wiring):
    """Each piece of wiring reads, asks the plan, performs: none grows past a screenful."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "platform_ops" / wiring).read_text())
    sizes = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert sizes and max(sizes.values()) <= 60, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


REAP_RUN = "1c0ffee5-0000-4000-8000-000000000001"


def _reaped_finding(name, reasons):
    """An execution whose failed train tasks carry these statusReasons (the reaper's, or others)."""
    ex = execution(name)
    outcomes = [lambda i, r=r: job(i, status_reason=r, attempts=1) for r in reasons] + [None]
    return core.Finding(ref(ex), core.drill_down(ex, foreach_history(outcomes), "staging"), None)


def test_a_failure_every_task_of_which_one_reap_cancelled_replies_under_that_reaps_report():
    from platform_ops.vocabulary import REASON_PREFIX, reap_reason_suffix

    reaped = f"{REASON_PREFIX} RUNNABLE for 2h30m > 2h (capacity){reap_reason_suffix(REAP_RUN)}"
    caused = _reaped_finding("reaped", [reaped, reaped])
    mixed = _reaped_finding("mixed", [reaped, "Essential container in task exited"])
    forged = _reaped_finding("forged", [f"my own text{reap_reason_suffix(REAP_RUN)}"])  # staging wrote it
    assert caused.incident.reaped_by == REAP_RUN
    assert mixed.incident.reaped_by is None and forged.incident.reaped_by is None
    others = [_finding(f"s{i}") for i in range(3)]
    findings = [caused, mixed, forged, *others]
    plan = core.plan_posts(findings, [f.ref for f in findings], LINKS, threshold=4, digest_record=None,
                           reports={REAP_RUN: "1700000000.000100"})
    under_report = [p for p in plan.posts if p.reaped_by]
    assert [(p.label, p.thread_ts, p.in_digest) for p in under_report] == [("reaped", "1700000000.000100", False)]
    assert "`sfn-reaped`" in under_report[0].affected and "in staging" in under_report[0].affected
    assert plan.digest is not None and sum(p.in_digest for p in plan.posts) == 5  # the storm is the other five
    unknown = core.plan_posts([caused], [caused.ref], LINKS, 4, None, reports={})  # report never posted
    assert [p.thread_ts for p in unknown.posts] == [None]  # then it is an alert of its own
    update = core.render_report_with_affected({"text": "Reaper: 1 cancelled", "blocks": [{"type": "section",
                                               "text": {"type": "mrkdwn", "text": "report"}}]},
                                              [under_report[0].affected])
    assert update.text == "Reaper: 1 cancelled" and len(update.blocks) == 2
    assert update.blocks[-1]["elements"][0]["text"].startswith("*Runs failed by these cancels*")
