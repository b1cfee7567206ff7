"""The fault suite: the product run through the daemon against a sandbox that misbehaves.

Each scenario resets the world, sets up failed Metaflow runs and stuck Batch jobs, breaks one
thing (the daemon, a cursor, Slack, AWS), drives every sensor and run the way the Dagster daemon
would, then counts from the ground truth (the Slack sink, Batch's own job records), not from what
the product says it did. Every figure must be exact: alerts expected = sent, none lost, none
duplicated; cancellations expected = made, none wrong. A last scenario scans everything the
suite produced (run configs, tags, event logs, tick logs, Slack messages) for the credentials.

`python -m platform_ops.sandbox smoke --faults` runs it after the smoke pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from platform_ops.sandbox import flows, moto_internals
from platform_ops.sandbox.aws_faults import BURSTS
from platform_ops.sandbox.daemon import Daemon
from platform_ops.sandbox.world import account_client
from platform_ops.vocabulary import REASON_PREFIX

SCAN_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SLACK_BOT_TOKEN")


@dataclass
class Figures:
    scenario: str
    alerts_expected: int = 0
    alerts_sent: int = 0
    alerts_lost: int = 0
    alerts_duplicated: int = 0
    cancels_expected: int = 0
    cancels_made: int = 0
    cancels_wrong: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # other exact figures, shown beside "ok"

    @property
    def passed(self) -> bool:
        return (not self.problems and self.alerts_sent == self.alerts_expected and not self.alerts_lost
                and not self.alerts_duplicated and self.cancels_made == self.cancels_expected
                and not self.cancels_wrong)

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


@dataclass
class Workload:
    """What a scenario set up: executions that must be alerted once, jobs that must be cancelled
    (and jobs that must not)."""

    failures: list[str] = field(default_factory=list)
    stuck: dict[str, list[str]] = field(default_factory=dict)  # environment -> job ids to cancel
    spared: dict[str, list[str]] = field(default_factory=dict)  # environment -> job ids to leave alone


class FaultBox:
    """One sandbox, reset per scenario; the product's settings, defs and a fresh instance."""

    def __init__(self, sandbox: Any, settings: Any):
        self.sandbox = sandbox
        self.base = dataclasses.replace(
            settings, alerts=dataclasses.replace(settings.alerts, retries=3, retry_delay_seconds=1.0,
                                                 post_interval_seconds=0.2))
        self.transcript: list[str] = []  # everything the product wrote, for the secrets scan
        self.secrets: set[str] = set()

    # -- the world --------------------------------------------------------------------------
    def reset(self) -> None:
        from platform_ops.adapters.aws import forget_sessions

        self.sandbox.reset()
        self.sandbox.sink.state.reset()
        forget_sessions()

    def stuck(self, environment: str, count: int, minutes: float = 150) -> list[str]:
        queue = self.base.environments[environment].job_queues[0]
        return self.sandbox.submit_jobs({"environment": environment, "queue": queue, "count": count, "vcpus": 96,
                                         "name": "SFN-TrainFlow--train--{i}", "created_minutes_ago": minutes})

    def fail_flows(self, environment: str, count: int, tag: str) -> list[str]:
        """`count` Metaflow runs whose train task runs out of memory, run to the end."""
        env = self.base.environments[environment]
        names = [f"{tag}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for name in names:
            moto_internals.STATE.add_rule(moto_internals.FaultRule(fault="oom", account=env.account_id,
                                                                   run_id=name, step="train", index=0))
            flows.trigger(self.sandbox.endpoint, env, width=1, name=name)
        sfn = account_client(self.sandbox.endpoint, "stepfunctions", env.account_id, env.region)
        machine = flows.DEPLOYMENTS[env.name].name
        deadline = time.monotonic() + 180  # a run takes seconds; this is for a very busy machine
        for name in names:
            arn = f"arn:aws:states:{env.region}:{env.account_id}:execution:{machine}:{name}"
            while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} still RUNNING after 180 s")
                time.sleep(0.2)
        return names

    def workload(self, tag: str, stuck: dict[str, int] | None = None, failures: dict[str, int] | None = None
                 ) -> Workload:
        load = Workload()
        for environment, count in (failures or {}).items():
            load.failures += self.fail_flows(environment, count, tag)
        for environment, count in (stuck or {}).items():
            load.stuck[environment] = self.stuck(environment, count)
        return load

    def aws_fault(self, **fault: Any) -> None:
        self.sandbox.aws_faults.arm(fault)

    # -- the product ------------------------------------------------------------------------
    def run(self, scenario: Callable[[FaultBox, Any], Figures], settings: Any = None) -> Figures:
        import dagster as dg

        from platform_ops.code_location import build_defs

        self.reset()
        defs = build_defs(settings or self.base)
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            daemon = Daemon(defs, instance)
            try:
                figures = scenario(self, daemon)
            except Exception as exc:  # a scenario that cannot finish is a failed scenario, with why
                figures = Figures(scenario.__name__.removeprefix("scenario_"),
                                  problems=[f"{type(exc).__name__}: {exc}"])
            self._record(defs, instance, daemon)
        return figures

    def _record(self, defs: Any, instance: Any, daemon: Daemon) -> None:
        from dagster._serdes import serialize_value

        for run in instance.get_runs():
            self.transcript.append(json.dumps(run.run_config, default=str))
            self.transcript.append(json.dumps(dict(run.tags)))
            self.transcript.extend(serialize_value(entry) for entry in instance.all_logs(run.run_id))
        self.transcript.extend(daemon.tick_logs + daemon.tick_errors)
        self.transcript.extend(str(c) for c in daemon.cursors.values())
        self.transcript.extend(json.dumps(m) for m in self.sandbox.sink.state.messages)
        self.transcript.extend(json.dumps(r) for r in self.audit_records())
        for name, resource in defs.resources.items():
            if name.startswith("aws_") and getattr(resource, "role_arn", None):
                try:
                    creds = resource.session().get_credentials().get_frozen_credentials()
                    self.secrets.update({creds.secret_key, creds.token})
                except Exception:  # the role was broken in this scenario: no keys were issued
                    pass

    def audit_records(self) -> list[dict]:
        """The promotion audit records in the target account's bucket, as S3 holds them."""
        p = self.base.promotion
        if p is None:
            return []
        env = self.base.environments[p.target]
        s3 = account_client(self.sandbox.endpoint, "s3", env.account_id, env.region)
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=p.audit_bucket)
                for o in page.get("Contents", [])]
        return [json.loads(s3.get_object(Bucket=p.audit_bucket, Key=k)["Body"].read()) for k in sorted(keys)]

    # -- the ground truth -------------------------------------------------------------------
    def count(self, name: str, load: Workload, extra_alerts: int = 0, extra_sent: int = 0) -> Figures:
        """Figures from Slack's and Batch's own records."""
        messages = [m for m in self.sandbox.sink.state.messages if not m["text"].startswith("Reaper:")]
        per_execution = {f: sum(1 for m in messages if f in m["text"]) for f in load.failures}
        figures = Figures(name)
        figures.alerts_expected = len(load.failures) + extra_alerts
        figures.alerts_sent = sum(1 for n in per_execution.values() if n) + extra_sent
        figures.alerts_lost = figures.alerts_expected - figures.alerts_sent
        figures.alerts_duplicated = sum(n - 1 for n in per_execution.values() if n > 1)
        unknown = len(messages) - sum(per_execution.values())
        if unknown:
            figures.problems.append(f"{unknown} Slack messages about no expected execution")
        for environment in set(load.stuck) | set(load.spared):
            expected, spared = set(load.stuck.get(environment, [])), set(load.spared.get(environment, []))
            cancelled = self.cancelled(environment, expected | spared)
            figures.cancels_expected += len(expected)
            figures.cancels_made += len(cancelled & expected)
            figures.cancels_wrong += len(cancelled - expected)
        return figures

    def cancelled(self, environment: str, job_ids: set[str]) -> set[str]:
        env = self.base.environments[environment]
        batch = account_client(self.sandbox.endpoint, "batch", env.account_id, env.region)
        ids, done = sorted(job_ids), set()
        for start in range(0, len(ids), 100):
            for job in batch.describe_jobs(jobs=ids[start:start + 100])["jobs"]:
                if job["status"] == "FAILED" and job.get("statusReason", "").startswith(REASON_PREFIX):
                    done.add(job["jobId"])
        return done

    def reaper_reports(self) -> list[dict]:
        return [m for m in self.sandbox.sink.state.messages if m["text"].startswith("Reaper:")]


def settle(daemon: Daemon, cycles: int = 2) -> None:
    """Ticks until the product has acted on everything (events deleted, reaps verified)."""
    for _ in range(cycles):
        daemon.cycle()


STANDARD = {"stuck": {"staging": 3, "production": 2}, "failures": {"staging": 1, "production": 1}}


# -- scenarios --------------------------------------------------------------------------------

def scenario_duplicate_ticks(box: FaultBox, daemon: Daemon) -> Figures:
    """Every tick is evaluated twice from the same cursor and every request launched twice (no
    run-key dedupe): the ledger and the reap run's re-check must hold on their own."""
    load = box.workload("dup", **STANDARD)
    daemon.dedupe = False
    for name in daemon.sensor_names:
        cursor = daemon.cursors.get(name)
        requests = daemon.tick(name, cursor) + daemon.tick(name, cursor)
        for request, job in requests:
            daemon.launch(request, job)
    settle(daemon)
    return box.count("duplicate sensor ticks", load)


def scenario_daemon_restart(box: FaultBox, daemon: Daemon) -> Figures:
    """The daemon stores a tick's cursor and run requests, then dies before launching them; the
    new daemon launches them (as Dagster resumes a tick) after it has ticked again."""
    load = box.workload("restart", **STANDARD)
    stored = [r for name in daemon.sensor_names for r in daemon.tick(name)]
    restarted = Daemon(daemon.defs, daemon.instance, cursors=dict(daemon.cursors))
    restarted.cycle()
    for request, job in stored:
        restarted.launch(request, job)
    settle(restarted)
    daemon.tick_logs += restarted.tick_logs
    return box.count("daemon restart between request and run", load)


def scenario_lost_cursor(box: FaultBox, daemon: Daemon) -> Figures:
    """Everything handled, then every cursor is lost: the sensors look back again and find the
    same failures and the same (now cancelled) jobs, and nothing goes out twice."""
    load = box.workload("cursor", **STANDARD)
    settle(daemon)
    daemon.cursors.clear()
    settle(daemon)
    return box.count("lost cursor", load)


def scenario_slack_5xx(box: FaultBox, daemon: Daemon) -> Figures:
    """Slack answers 500 to the next 4 requests: one post's own retries run out, the op retries."""
    load = box.workload("slack5xx", failures={"staging": 1, "production": 1})
    box.sandbox.sink.state.faults.extend([{"kind": "server_error"}] * 4)
    settle(daemon)
    return box.count("Slack down (5xx), then back", load)


def scenario_slack_refused(box: FaultBox, daemon: Daemon) -> Figures:
    """Nothing listens on Slack's port (connection refused) until the product has met it: Slack
    comes back once an alert op has failed on it and waits for its retry, whatever time that
    took (a condition, not a timer)."""
    load = box.workload("refused", failures={"staging": 1, "production": 1})
    box.sandbox.sink.go_down()
    done = threading.Event()
    watcher = threading.Thread(target=_back_when_retrying, args=(box, daemon.instance, done), daemon=True)
    watcher.start()
    try:
        settle(daemon)
    finally:
        done.set()
        watcher.join()
    figures = box.count("Slack down (connection refused), then back", load)
    if not _retried(daemon.instance):
        figures.problems.append("no alert op ever met the refused connection")
    return figures


def _retried(instance: Any) -> bool:
    """Whether some run's op failed and waits for (or had) its retry."""
    import dagster as dg

    return any(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
               for run in instance.get_runs())


def _back_when_retrying(box: FaultBox, instance: Any, done: threading.Event) -> None:
    """Slack's port listens again as soon as an op is up for retry (or when the scenario is done)."""
    while not done.is_set() and not _retried(instance):
        done.wait(0.05)
    box.sandbox.sink.come_back()


def scenario_slack_429(box: FaultBox, daemon: Daemon) -> Figures:
    """Slack rate-limits the next 2 posts with Retry-After: 1."""
    load = box.workload("ratelimit", failures={"staging": 1, "production": 1})
    box.sandbox.sink.state.faults.extend([{"kind": "rate_limit", "retry_after": 1}] * 2)
    settle(daemon)
    figures = box.count("Slack 429 with Retry-After", load)
    if box.sandbox.sink.state.requests < len(load.failures) + 2:
        figures.problems.append("the 429s were never met")
    return figures


def scenario_slack_answer_lost(box: FaultBox, daemon: Daemon) -> Figures:
    """Slack keeps the first alert and the connection drops before its answer: the op's retry
    finds it in the channel by its metadata instead of posting it again."""
    load = box.workload("lostanswer", failures={"staging": 1, "production": 1})
    box.sandbox.sink.state.faults.append({"kind": "accept_and_drop", "when": {"event_type": "platform_ops_alert"}})
    settle(daemon)
    figures = box.count("Slack kept a post, its answer was lost", load)
    if box.sandbox.sink.state.faults:
        figures.problems.append("no answer was ever lost")
    return figures


THROTTLED = ("batch", "states", "monitoring", "logs")


def scenario_aws_throttling(box: FaultBox, daemon: Daemon) -> Figures:
    """30% of the calls to Batch, Step Functions, CloudWatch and CloudWatch Logs are throttled,
    up to 3 in a row per service (aws_faults.BURSTS), each in its service's error shape, through
    a full round: ticks, reaps, alerts (their log tails), events, the metrics refresh and its
    PutMetricData. Every refusal must be retried (the sandbox counts both), no tick and no run
    may fail."""
    load = box.workload("throttle", **STANDARD)
    box.aws_fault(kind="throttle", services=list(THROTTLED), pattern=BURSTS)
    settle(daemon)
    metrics = daemon.defs.resolve_job_def("refresh_platform_metrics").execute_in_process(
        instance=daemon.instance, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    daemon.runs.append(metrics)
    throttled, retried = box.sandbox.aws_faults.counts(), box.sandbox.aws_faults.retries()
    box.sandbox.aws_faults.reset()  # the ground truth is read unthrottled
    figures = box.count("AWS throttling in bursts: Batch, SFN, CW, Logs", load)
    figures.notes.append(f"{sum(throttled.values())} calls throttled "
                         f"({', '.join(f'{s} {n}' for s, n in throttled.items())}), {sum(retried.values())} retried")
    missing = [s for s, n in throttled.items() if n == 0]
    if missing:
        figures.problems.append(f"never throttled: {missing}")
    given_up = {s: throttled[s] - retried.get(s, 0) for s in throttled if retried.get(s, 0) < throttled[s]}
    if given_up:
        figures.problems.append(f"throttled calls never retried: {given_up}")
    if daemon.ticks_failed:
        figures.problems.append(f"{daemon.ticks_failed} sensor ticks failed under throttling: "
                                + "; ".join(daemon.tick_errors))
    if daemon.runs_failed:
        figures.problems.append(f"{daemon.runs_failed} runs failed under throttling: " + "; ".join(failed_runs(daemon)))
    return figures


def failed_runs(daemon: Daemon) -> list[str]:
    """Each failed run's job and its first step failure, so a failed row says why."""
    out = []
    for run in daemon.runs:
        if not run.success:
            failures = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
            error = failures[0].event_specific_data.error if failures else None
            why = error.message.strip() if error else "failed"
            if error and error.cause:  # "Exceeded max_retries of 3" says when, its cause says why
                why += f" ({error.cause.message.strip()})"
            out.append(f"{run.job_def.name}: {why}"[:500])
    return out


def scenario_starting_before_cancel(box: FaultBox, daemon: Daemon) -> Figures:
    """A job is placed (STARTING) after the sensor saw it stuck and before the run cancels."""
    load = box.workload("race", stuck={"staging": 3})
    [(request, job)] = daemon.tick("stuck_jobs_sensor")
    placed = load.stuck["staging"].pop(0)
    load.spared["staging"] = [placed]
    env = box.base.environments["staging"]
    moto_internals.set_job_status(env.account_id, env.region, placed, "STARTING")
    daemon.launch(request, job)
    figures = box.count("job moves to STARTING before the cancel", load)
    if box.cancelled("staging", {placed}):
        figures.problems.append("the STARTING job was cancelled")
    return figures


def scenario_breaker(box: FaultBox, daemon: Daemon) -> Figures:
    """8 stuck jobs, the breaker allows 5 a run: the 5 oldest go, one report says why."""
    load = Workload()
    ages = [400, 390, 380, 370, 360, 350, 340, 330]
    ids = [box.stuck("staging", 1, minutes=m)[0] for m in ages]
    load.stuck["staging"], load.spared["staging"] = ids[:5], ids[5:]
    daemon.cycle(["stuck_jobs_sensor"])
    reports = box.reaper_reports()
    tripped = [m for m in reports if "Breaker tripped" in m["text"]]
    figures = box.count("more stuck jobs than the breaker allows", load,
                        extra_alerts=1, extra_sent=min(1, len(tripped)))
    figures.alerts_duplicated += max(0, len(reports) - 1)
    return figures


def scenario_broken_role(box: FaultBox, daemon: Daemon) -> Figures:
    """Production's role cannot be assumed: staging is still watched and acted on, the error is
    on the ticks; once the role is mended, production's backlog is handled, once."""
    load = box.workload("role", **STANDARD)
    box.aws_fault(kind="deny-assume-role", account=box.base.environments["production"].account_id)
    settle(daemon)
    first = box.count("one environment's role broken", Workload(load.failures[:1], {"staging": load.stuck["staging"]},
                                                                 {"production": load.stuck["production"]}))
    seen = " ".join(daemon.tick_logs + daemon.tick_errors)
    box.sandbox.aws_faults.denied_accounts.clear()
    daemon.cursors.pop("stuck_jobs_sensor", None)  # production's reconcile is due now, not in 10 minutes
    settle(daemon)
    figures = box.count("one environment's role broken", load)
    figures.problems += [f"while broken: {p}" for p in first.problems]
    if first.alerts_sent != 1 or first.cancels_made != 3 or first.cancels_wrong:
        figures.problems.append(f"while broken, staging got {first.alerts_sent} alerts / {first.cancels_made} "
                                f"cancels and production {first.cancels_wrong} cancels")
    if "production" not in seen or "AccessDenied" not in seen:
        figures.problems.append("the broken role is not visible on the ticks")
    return figures


def _mangled(how: str, label: str) -> Callable[[FaultBox, Daemon], Figures]:
    def scenario(box: FaultBox, daemon: Daemon) -> Figures:
        env = box.base.environments["staging"]
        name = f"{how}-{uuid.uuid4().hex[:8]}"
        box.aws_fault(kind="mangle-history", execution=name, how=how)
        moto_internals.STATE.add_rule(moto_internals.FaultRule(fault="oom", account=env.account_id, run_id=name,
                                                               step="train", index=0))
        flows.run_to_end(box.sandbox.endpoint, env, name, width=1)
        settle(daemon)
        return box.count(label, Workload([name]))

    scenario.__name__ = f"scenario_{how}"
    return scenario


LEAKY_FLOW = """
import os
from metaflow import FlowSpec, step

print("debug: SLACK_BOT_TOKEN={token} aws_secret_access_key = {secret} key id {key}")
print("found:", open(f"/proc/{{os.getppid()}}/environ").read())


class DemoFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    DemoFlow()
"""


def scenario_staging_prints_credentials(box: FaultBox, daemon: Daemon) -> Figures:
    """Staging code that got hold of our credentials prints them: a task's log lines (alerted) and
    a flow file whose lint prints them and reads its parent's environ (promotion blocked, audited).
    The alert and the audit record must carry none of it (the scan below reads both)."""
    from platform_ops.promotion.defs import PROMOTION_TAG

    staging = box.base.environments["staging"]
    name = f"leaky-{uuid.uuid4().hex[:8]}"
    moto_internals.STATE.add_rule(moto_internals.FaultRule(fault="leaky", account=staging.account_id, run_id=name,
                                                           step="train", index=0))
    flows.run_to_end(box.sandbox.endpoint, staging, name, width=1)
    settle(daemon)
    figures = box.count("staging code prints our credentials", Workload([name]))
    if box.base.promotion is None:
        return figures
    flows.redeploy(box.sandbox.endpoint, staging, LEAKY_FLOW.format(
        token=os.environ.get("SLACK_BOT_TOKEN", ""), secret=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        key=os.environ.get("AWS_ACCESS_KEY_ID", "")))
    config = {"flow": "DemoFlow", "project": "mlplatform", "branch": "feature_x", "requested_by": "fault-suite",
              "reason": "staging code that leaks"}
    result = daemon.defs.resolve_job_def("promote_flow").execute_in_process(
        run_config={"ops": {"promote_flow": {"config": config}}}, instance=daemon.instance,
        tags={PROMOTION_TAG: "mlplatform.prod.DemoFlow"}, raise_on_error=False)
    records = box.audit_records()
    if result.success or [r.get("outcome") for r in records] != ["blocked"]:
        figures.problems.append(f"the leaky promotion was not blocked once: {[r.get('outcome') for r in records]}")
    elif not any(c["name"] == "lint" and not c["passed"] for c in records[0]["checks"]):
        figures.problems.append("the leaky package passed the lint")
    return figures


def scenario_unknown_owner(box: FaultBox, daemon: Daemon) -> Figures:
    """The run's owner has no Slack id in the settings: the alert still goes, naming them."""
    load = box.workload("owner", failures={"staging": 1})
    settle(daemon)
    figures = box.count("unknown owner", load)
    if any("<@" in json.dumps(m["blocks"]) for m in box.sandbox.sink.state.messages):
        figures.problems.append("an unknown owner was mentioned as a Slack user")
    return figures


SCENARIOS: list[tuple[Callable[[FaultBox, Daemon], Figures], Callable[[Any], Any] | None]] = [
    (scenario_duplicate_ticks, None),
    (scenario_daemon_restart, None),
    (scenario_lost_cursor, None),
    (scenario_slack_5xx, None),
    # the op's retries give the watcher 1 + 2 + 4 + 8 + 16 + 32 s to see the outage met; the first is enough
    (scenario_slack_refused, lambda s: dataclasses.replace(s, alerts=dataclasses.replace(s.alerts, retries=6))),
    (scenario_slack_429, None),
    (scenario_slack_answer_lost, None),
    (scenario_aws_throttling, None),
    (scenario_starting_before_cancel, None),
    (scenario_breaker, lambda s: dataclasses.replace(s, reaper=dataclasses.replace(s.reaper, max_cancels_per_run=5))),
    (scenario_broken_role, None),
    (_mangled("malformed", "malformed execution history"), None),
    (_mangled("cause-not-json", "a failure cause that is not JSON"), None),
    (scenario_unknown_owner, lambda s: dataclasses.replace(s, slack=dataclasses.replace(s.slack, owners={}))),
    (_mangled("oversized", "an oversized message"), None),
    (scenario_staging_prints_credentials, None),
]


def scan(box: FaultBox) -> Figures:
    """The credentials the product held during the suite, looked for in everything it wrote."""
    figures = Figures("no secret in logs, metadata, Slack or records")
    wanted = {v for v in (os.environ.get(k) for k in SCAN_ENV) if v and len(v) >= 12} | {s for s in box.secrets if s}
    text = "\n".join(box.transcript)
    for secret in sorted(wanted):
        hits = text.count(secret)
        if hits:
            figures.problems.append(f"a credential ({secret[:4]}…) appears {hits} times")
    if not box.transcript or len(wanted) < len(SCAN_ENV):
        figures.problems.append("nothing to scan: the suite's credentials are not distinctive")
    return figures


def distinctive_credentials() -> dict[str, str]:
    """Credentials no other text could contain, so the scan's hits are real leaks. moto takes
    any key; Slack's sink takes any xoxb- token."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "SLACK_BOT_TOKEN": "xoxb-" + secrets.token_hex(16),
    }


def run_suite(sandbox: Any, settings: Any, only: str | None = None) -> list[Figures]:
    box = FaultBox(sandbox, settings)
    results = []
    for scenario, adjust in SCENARIOS:
        if only and only not in scenario.__name__:
            continue
        results.append(box.run(scenario, adjust(box.base) if adjust else None))
    results.append(scan(box))
    return results


COLUMNS = [("scenario", "scenario", 46), ("alerts_expected", "alerts exp", 10), ("alerts_sent", "sent", 5),
           ("alerts_lost", "lost", 5), ("alerts_duplicated", "dup", 4), ("cancels_expected", "cancels exp", 11),
           ("cancels_made", "made", 5), ("cancels_wrong", "wrong", 6)]


def table(results: list[Figures]) -> str:
    """One table of figures, a row per scenario and a total."""
    def line(values: list[Any]) -> str:
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, (_, _, w)) in
                         enumerate(zip(values, COLUMNS, strict=False))) + "  " + str(values[-1])

    head = line([title for _, title, _ in COLUMNS] + ["result"])
    rows = [line([getattr(f, key) for key, _, _ in COLUMNS] + [
        ("ok" + "".join(f" ({n})" for n in f.notes)) if f.passed else "FAILED: " + "; ".join(f.problems)])
        for f in results]
    totals = ["total"] + [sum(getattr(f, key) for f in results) for key, _, _ in COLUMNS[1:]]
    passed = sum(f.passed for f in results)
    return "\n".join([head, *rows, line(totals + [f"{passed}/{len(results)} passed"])])
