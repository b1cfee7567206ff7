"""`make bench`: speed and API cost, as JSON lines, each beside a naive baseline from the same run.

Reaper: 10,000 RUNNABLE jobs over 5 queues, 200 of them past the threshold, in the sandbox (run
in its own process, as AWS would be). Measures the sensor tick and the reap runs of platform-ops
against a naive reaper that describes every RUNNABLE job and cancels one by one.
Alerts: (a) one failed execution with a 1000-task foreach and 300 tasks out of memory, against
the seed's one message per failed Batch job; (b) 20 executions failing in one tick: one digest,
replies in its thread, paced. Also the time to load the code location (import + Definitions).
Promotion: a promotion, five relaunches of the same request, the history table; against a naive
promoter that redeploys and triggers on every launch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from platform_ops.sandbox.server import free_port
from platform_ops.sandbox.smoke import SANDBOX_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
QUEUES = [f"ml-bench-{i}" for i in range(5)]
JOBS, STUCK = 10_000, 200


def emit(**line) -> None:
    print(json.dumps(line), flush=True)


def bench_settings(tmp: Path) -> Path:
    data = yaml.safe_load(SANDBOX_SETTINGS.read_text())
    data["environments"]["staging"]["job_queues"] = QUEUES
    data["reaper"]["max_cancels_per_run"] = STUCK
    data["alerts"]["silences"] = []
    data["promotion"]["queues"] = {q: "ml-production" for q in QUEUES}
    path = tmp / "bench-settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class SandboxProcess:
    def __init__(self, settings: Path):
        self.port, self.slack_port = free_port(), free_port()
        env = {**os.environ, "PLATFORM_OPS_SETTINGS": str(settings), "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "platform_ops.sandbox", "serve", "--scenario", "empty",
             "--aws-port", str(self.port), "--slack-port", str(self.slack_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.env: dict[str, str] = {}
        for line in self.proc.stdout:
            if line.startswith("  export "):
                key, value = line.strip().removeprefix("export ").split("=", 1)
                self.env[key] = value
            if "SLACK_BOT_TOKEN" in line:
                break

    def control(self, action: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_sandbox/{action}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.load(resp)

    def seed(self) -> None:
        self.control("reset", {})
        per_queue, stuck_per_queue = JOBS // len(QUEUES), STUCK // len(QUEUES)
        for queue in QUEUES:
            common = {"environment": "staging", "queue": queue, "vcpus": 96, "name": "SFN-BenchFlow--train--"}
            self.control("jobs", {**common, "count": stuck_per_queue, "created_minutes_ago": 150})
            self.control("jobs", {**common, "count": per_queue - stuck_per_queue, "created_minutes_ago": 20})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def timed(fn):
    from platform_ops.adapters.aws import count_calls

    with count_calls() as calls:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, dict(calls)


def naive_reap(settings) -> int:
    """What a first reaper does: describe every RUNNABLE job, cancel the stuck ones one by one."""
    from platform_ops.adapters import batch
    from platform_ops.reaper import core
    from platform_ops.resources import build_resources

    client = build_resources(settings)["aws_staging"].client("batch")
    now = datetime.now(UTC)
    cancelled = 0
    for queue in QUEUES:
        ids = [j.job_id for j in batch.iter_jobs(client, queue, "RUNNABLE")]
        details = batch.describe_jobs(client, ids)
        for job in details.values():
            if now - core.runnable_since(job) > timedelta(hours=2):
                client.cancel_job(jobId=job.job_id, reason="reaper: stuck")
                cancelled += 1
    return cancelled


def bench_reaper(settings_path: Path) -> None:
    import dagster as dg

    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.code_location import build_defs
    from platform_ops.settings import load_settings

    settings = load_settings(settings_path)
    sandbox = SandboxProcess(settings_path)
    try:
        os.environ.update(sandbox.env)
        os.environ["PLATFORM_OPS_SETTINGS"] = str(settings_path)

        sandbox.seed()
        forget_sessions()
        cancelled, naive_seconds, naive_calls = timed(lambda: naive_reap(settings))
        emit(bench="reaper", variant="naive (describe every job, CancelJob each)", jobs=JOBS, stuck=STUCK,
             cancelled=cancelled, seconds=round(naive_seconds, 3), calls=naive_calls,
             calls_total=sum(naive_calls.values()))

        sandbox.seed()
        forget_sessions()
        defs = build_defs(settings)
        sensor = defs.resolve_sensor_def("stuck_jobs_sensor")
        job = defs.resolve_job_def("reap_stuck_jobs")
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            def tick():
                with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
                    return sensor.evaluate_tick(ctx)

            result, tick_seconds, tick_calls = timed(tick)
            quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

            def reap_all():
                return [job.execute_in_process(run_config={**r.run_config, **quiet}, instance=instance, tags=r.tags)
                        for r in result.run_requests]

            runs, reap_seconds, reap_calls = timed(reap_all)
            reaped = 0
            for run in runs:
                for event in run.all_events:
                    if event.event_type_value == "STEP_OUTPUT":
                        reaped += event.event_specific_data.metadata["cancelled"].value
        per_queue = JOBS // len(QUEUES)
        stuck_per_queue = STUCK // len(QUEUES)
        empty_queues = sum(len(e.job_queues) for e in settings.environments.values()) - len(QUEUES)
        floor = empty_queues + len(QUEUES) * (  # one list page per empty queue (production's)
            math.ceil(per_queue / 1000) + 2 * math.ceil(stuck_per_queue / 100) + math.ceil(stuck_per_queue / 50))
        ours = Counter(tick_calls) + Counter(reap_calls)
        ours.pop("STS.AssumeRole", None)
        emit(bench="reaper", variant="platform-ops", jobs=JOBS, stuck=STUCK, cancelled=reaped,
             tick_seconds=round(tick_seconds, 3), tick_target_seconds=5, tick_calls=tick_calls,
             reap_runs=len(runs), reap_seconds=round(reap_seconds, 3), reap_calls=reap_calls,
             calls_total=sum(ours.values()), calls_floor=floor,
             slack_messages=len(json.load(urllib.request.urlopen(
                 f"http://127.0.0.1:{sandbox.slack_port}/_sink/messages"))["messages"]))
    finally:
        sandbox.stop()


def _wait_done(client, arns: list[str], timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        described = [client.describe_execution(executionArn=a) for a in arns]
        if all(d["status"] != "RUNNING" for d in described) or time.monotonic() > deadline:
            return described
        time.sleep(2)


def _sink(sandbox: SandboxProcess, path: str, body: dict | None = None) -> dict:
    url = f"http://127.0.0.1:{sandbox.slack_port}{path}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET")) as resp:
        return json.load(resp)


def _alert_pass(settings, instance) -> tuple[dict, dict, int]:
    """One failed_executions_sensor tick and the alert runs it requests, counted."""
    import dagster as dg

    from platform_ops.code_location import build_defs

    defs = build_defs(settings)
    sensor = defs.resolve_sensor_def("failed_executions_sensor")
    job = defs.resolve_job_def("alert_failed_executions")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def go():
        with dg.build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            result = sensor.evaluate_tick(ctx)
        for r in result.run_requests:
            job.execute_in_process(run_config={**r.run_config, **quiet}, instance=instance, tags=r.tags)
        return len(result.run_requests)

    runs, seconds, calls = timed(go)
    return calls, {"seconds": round(seconds, 3)}, runs


def bench_alerts(settings_path: Path) -> None:
    import boto3
    import dagster as dg
    from botocore.config import Config
    from slack_sdk import WebClient

    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.settings import load_settings

    settings = load_settings(settings_path)
    prod = settings.environments["production"]
    sandbox = SandboxProcess(settings_path)
    try:
        os.environ.update(sandbox.env)
        sfn = boto3.client("stepfunctions", endpoint_url=sandbox.env["AWS_ENDPOINT_URL"], region_name=prod.region,
                           aws_access_key_id="sandbox", aws_secret_access_key="sandbox",
                           config=Config(read_timeout=300, retries={"max_attempts": 0}))
        sfn.meta.events.register("before-sign", lambda request, **_: request.headers.__setitem__(
            "x-moto-account-id", prod.account_id))

        # (a) one execution, a 1000-task foreach (--max-workers 300), 300 tasks out of memory
        sandbox.control("reset", {})
        arn = sandbox.control("deploy-flow", {"environment": "production", "name": "mlplatform.prod.WideFlow",
                                              "max_workers": 300})["arn"]
        # the first 300 train tasks (max workers 300: all in flight) run until 45 s after the fault is
        # set, then all run out of memory at once
        sandbox.control("faults", {"fault": "oom", "account": prod.account_id, "run_id": "wide", "step": "train",
                                   "remaining": 300, "after_seconds": 45})
        sandbox.control("start-flow", {"environment": "production", "name": "wide", "width": 1000,
                                       "state_machine": "mlplatform.prod.WideFlow"})
        start = time.perf_counter()
        [done] = _wait_done(sfn, [arn.replace(":stateMachine:", ":execution:") + ":wide"])
        run_seconds = time.perf_counter() - start
        events = sum(1 for _ in _history(sfn, done["executionArn"]))
        batch = boto3.client("batch", endpoint_url=sandbox.env["AWS_ENDPOINT_URL"], region_name=prod.region,
                             aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
        batch.meta.events.register("before-sign", lambda request, **_: request.headers.__setitem__(
            "x-moto-account-id", prod.account_id))

        deadline = time.monotonic() + 120
        while batch.list_jobs(jobQueue=prod.job_queues[0], jobStatus="RUNNING")["jobSummaryList"]:
            assert time.monotonic() < deadline, "Batch jobs still RUNNING"
            time.sleep(1)

        def per_job_baseline() -> int:
            """The seed's way: one Slack message per failed Batch job."""
            slack = WebClient(token=sandbox.env["SLACK_BOT_TOKEN"], base_url=sandbox.env["SLACK_API_URL"])
            sent, kwargs = 0, {"jobQueue": prod.job_queues[0], "jobStatus": "FAILED", "maxResults": 1000}
            while True:
                page = batch.list_jobs(**kwargs)
                for j in page["jobSummaryList"]:
                    slack.chat_postMessage(channel="#ml-platform-alerts", text=f"Batch job {j['jobName']} failed")
                    sent += 1
                if "nextToken" not in page:
                    return sent
                kwargs["nextToken"] = page["nextToken"]

        _sink(sandbox, "/_sink/reset", {})
        baseline_messages, baseline_seconds, _ = timed(per_job_baseline)
        _sink(sandbox, "/_sink/reset", {})
        forget_sessions()
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            calls, timing, runs = _alert_pass(settings, instance)
        messages = _sink(sandbox, "/_sink/messages")["messages"]
        history_calls = calls.get("SFN.GetExecutionHistory", 0)
        emit(bench="alerts_wide_foreach", foreach=1000, max_workers=300, injected_oom=300,
             sandbox_run_seconds=round(run_seconds, 1), history_events=events,
             baseline={"variant": "per failed Batch job (the seed's alerting)", "slack_messages": baseline_messages,
                       "seconds": round(baseline_seconds, 3)},
             slack_messages=len(messages), alert_runs=runs, calls=calls, seconds=timing["seconds"],
             failed_tasks_in_history=sum(1 for e in _history(sfn, done["executionArn"]) if e["type"] == "TaskFailed"),
             history_pages=history_calls, history_pages_floor=math.ceil(events / 1000),
             log_reads=calls.get("CloudWatchLogs.GetLogEvents", 0), log_reads_max=1,
             headline=messages[0]["text"] if messages else None)

        # (b) a storm: 20 executions failing in one tick
        sandbox.control("reset", {})
        names = [f"storm-{i:02}" for i in range(20)]
        for name in names:
            sandbox.control("faults", {"fault": "oom", "account": prod.account_id, "run_id": name, "step": "train"})
            sandbox.control("start-flow", {"environment": "production", "name": name, "width": 2})
        machine = f"arn:aws:states:{prod.region}:{prod.account_id}:execution:mlplatform.prod.DemoFlow"
        _wait_done(sfn, [f"{machine}:{n}" for n in names])
        _sink(sandbox, "/_sink/reset", {})
        forget_sessions()
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            calls, timing, runs = _alert_pass(settings, instance)
        messages = _sink(sandbox, "/_sink/messages")["messages"]
        stamps = sorted(float(m["ts"]) for m in messages)
        burst = max((sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps), default=0)
        threads = Counter(m["thread_ts"] for m in messages)
        emit(bench="alerts_storm", executions=20, digest_threshold=settings.alerts.digest_threshold,
             slack_messages=len(messages), top_level_messages=threads[None],
             thread_replies=sum(v for k, v in threads.items() if k is not None),
             max_messages_in_any_second=burst, target_max_per_second=1, seconds=timing["seconds"],
             calls=calls, baseline={"variant": "one message per execution, unpaced", "slack_messages": 20})

        # (c) a streak: one flow failing 10 runs in a row, each alerted on its own tick
        sandbox.control("reset", {})
        _sink(sandbox, "/_sink/reset", {})
        forget_sessions()
        slack = WebClient(token=sandbox.env["SLACK_BOT_TOKEN"], base_url=sandbox.env["SLACK_API_URL"])
        baseline_posts = 0
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            for i in range(10):
                name = f"streak-{i:02}"
                sandbox.control("faults", {"fault": "oom", "account": prod.account_id, "run_id": name, "step": "train"})
                sandbox.control("start-flow", {"environment": "production", "name": name, "width": 2})
                _wait_done(sfn, [f"{machine}:{name}"])
                _alert_pass(settings, instance)
            ours = _sink(sandbox, "/_sink/messages")["messages"]
            _sink(sandbox, "/_sink/reset", {})
            for i in range(10):  # the behaviour before streaks: a top-level message per failed execution
                slack.chat_postMessage(channel="#ml-platform-alerts", text=f"DemoFlow failed (sfn-streak-{i:02})")
                baseline_posts += 1
        threads = Counter(m["thread_ts"] for m in ours)
        emit(bench="alerts_streak", failed_runs_in_a_row=10, slack_messages=len(ours),
             top_level_messages=threads[None], thread_replies=len(ours) - threads[None],
             channel_pings=threads[None] + sum(1 for m in ours if m.get("reply_broadcast")),
             message_updates=sum(len(m.get("edits", [])) for m in ours),
             baseline={"variant": "a top-level message per failed execution (before streaks)",
                       "slack_messages": baseline_posts, "top_level_messages": baseline_posts})
    finally:
        sandbox.stop()


def _history(sfn, arn):
    kwargs = {"executionArn": arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        yield from page["events"]
        if "nextToken" not in page:
            return
        kwargs["nextToken"] = page["nextToken"]


def bench_metrics() -> None:
    """Summary of 1,000,000 synthetic job records, and PutMetricData calls for the published set."""
    import numpy as np
    import pandas as pd

    from platform_ops.metrics import core

    n, queues = 1_000_000, [f"ml-q{i}" for i in range(20)]
    rng = np.random.default_rng(42)
    now = pd.Timestamp.now(tz="UTC")
    created = now - pd.to_timedelta(rng.integers(0, 86_400, n), unit="s")
    started = created + pd.to_timedelta(rng.integers(0, 3_600, n), unit="s")
    status = rng.choice(core.STATUSES, n)
    df = pd.DataFrame({
        "environment": rng.choice(["staging", "production"], n), "queue": rng.choice(queues, n),
        "job_id": np.arange(n).astype(str), "name": "SFN-BenchFlow--train--", "job_definition": "metaflow_x",
        "status": status, "status_reason": np.where(rng.random(n) < 0.01, "platform-ops reaper: x", ""),
        "created_at": created, "started_at": started.where(~np.isin(status, ["SUBMITTED", "PENDING", "RUNNABLE"])),
        "stopped_at": (started + pd.to_timedelta(rng.integers(1, 7_200, n), unit="s")).where(
            np.isin(status, ["SUCCEEDED", "FAILED"])), "flow": "BenchFlow", "step": "train"})
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        summary = core.queue_summary(df, now.to_pydatetime())
        samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    naive = {}
    for row in df.head(100_000).itertuples():  # per-row Python, on a tenth of the rows
        key = (row.environment, row.queue)
        naive.setdefault(key, {}).setdefault(row.status, 0)
        naive[key][row.status] += 1
    naive_seconds = (time.perf_counter() - start) * 10
    capacity = core.capacity_summary(pd.DataFrame(columns=core.INSTANCE_COLUMNS), now.to_pydatetime(), {},
                                     [(e, f"{e}-ce{i}", "c") for e in ("staging", "production") for i in range(3)])
    datums = core.metric_data(summary, capacity)
    per_env = Counter(d.environment for d in datums)
    calls = sum(len(core.batches([d.api(now.to_pydatetime()) for d in datums if d.environment == env]))
                for env in per_env)  # each environment's metrics go to its own account, as the asset does
    emit(bench="metrics_summary", records=n, queues=len(summary), seconds_median=round(sorted(samples)[1], 3),
         target_seconds=3, baseline="per-row Python loop (counts only), extrapolated from 100k rows",
         baseline_seconds=round(naive_seconds, 3))
    emit(bench="metrics_publish", metrics=len(datums), put_metric_data_calls=calls,
         calls_floor=sum(math.ceil(k / 1000) for k in per_env.values()), baseline="one PutMetricData per metric",
         baseline_calls=len(datums))


def bench_promotion(settings_path: Path, reruns: int = 5) -> None:
    """One promotion, then `reruns` relaunches of the same request (a CI job retried, two people
    clicking), then the history asset; against a naive promoter that redeploys and triggers on
    every launch (the seed's productionize step, without a no-op check)."""
    import dagster as dg

    from platform_ops.adapters import stepfunctions
    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.code_location import build_defs
    from platform_ops.promotion.defs import PROMOTION_TAG
    from platform_ops.resources import build_resources
    from platform_ops.settings import load_settings

    settings = load_settings(settings_path)
    prod = settings.environments["production"]
    sandbox = SandboxProcess(settings_path)
    name = "mlplatform.prod.DemoFlow"
    config = {"ops": {"promote_flow": {"config": {
        "flow": "DemoFlow", "project": "mlplatform", "branch": "feature_x", "requested_by": "bench",
        "reason": "bench"}}}, "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    try:
        os.environ.update(sandbox.env)
        sandbox.control("reset", {})
        forget_sessions()
        sfn_staging = build_resources(settings)["aws_staging"].client("stepfunctions")
        sfn = build_resources(settings)["aws_production"].client("stepfunctions")
        run = sandbox.control("start-flow", {"environment": "staging", "name": "bench-staging", "width": 2})["name"]
        staging = settings.environments["staging"]
        _wait_done(sfn_staging, [f"arn:aws:states:{staging.region}:{staging.account_id}:execution:"
                                 f"mlplatform.test.feature_x.DemoFlow:{run}"])
        defs = build_defs(settings)
        job = defs.resolve_job_def("promote_flow")
        arn = stepfunctions.state_machine_arn(prod.account_id, prod.region, name)
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            def launch():
                result = job.execute_in_process(run_config=config, instance=instance, tags={PROMOTION_TAG: name})
                return result.output_for_node("promote_flow")["outcome"]

            outcome, first_seconds, first_calls = timed(launch)
            versions_before = len(stepfunctions.versions(sfn, arn))
            executions_before = len(sfn.list_executions(stateMachineArn=arn)["executions"])
            rerun_samples, rerun_calls, outcomes = [], Counter(), []
            for _ in range(reruns):
                o, seconds, calls = timed(launch)
                outcomes.append(o)
                rerun_samples.append(seconds)
                rerun_calls.update(calls)
            versions_after = len(stepfunctions.versions(sfn, arn))
            executions_after = len(sfn.list_executions(stateMachineArn=arn)["executions"])
            history_job = defs.resolve_implicit_global_asset_job_def().get_subset(
                asset_selection={dg.AssetKey("promotion_history")})
            _, history_seconds, history_calls = timed(lambda: history_job.execute_in_process(instance=instance))

        def naive():
            """Redeploy and trigger, every launch."""
            current = sfn.describe_state_machine(stateMachineArn=arn)
            sfn.update_state_machine(stateMachineArn=arn, definition=current["definition"], publish=True)
            sfn.start_execution(stateMachineArn=arn, input='{"Parameters": "{}"}')

        naive_versions = len(stepfunctions.versions(sfn, arn))
        _, naive_seconds, naive_calls = timed(lambda: [naive() for _ in range(reruns)])
        writes = ("SFN.CreateStateMachine", "SFN.UpdateStateMachine", "SFN.StartExecution")
        emit(bench="promotion", first_outcome=outcome, first_seconds=round(first_seconds, 3), first_calls=first_calls,
             reruns=reruns, rerun_outcomes=sorted(set(outcomes)),
             rerun_seconds_median=round(sorted(rerun_samples)[len(rerun_samples) // 2], 3),
             rerun_calls_per_launch={k: v / reruns for k, v in sorted(rerun_calls.items())},
             rerun_state_machine_writes=sum(rerun_calls[k] for k in writes),
             versions_published_by_reruns=versions_after - versions_before,
             production_runs_started_by_reruns=executions_after - executions_before,
             history_records=1 + reruns, history_seconds=round(history_seconds, 3), history_calls=history_calls,
             baseline={"variant": "redeploy + trigger on every launch", "seconds": round(naive_seconds, 3),
                       "state_machine_writes": sum(naive_calls.get(k, 0) for k in writes),
                       "versions_published": len(stepfunctions.versions(sfn, arn)) - naive_versions,
                       "production_runs_started": reruns})
    finally:
        sandbox.stop()


def bench_load() -> None:
    code = ("import time; t=time.perf_counter(); import platform_ops.definitions as d; "
            "d.defs.resolve_job_def('reap_stuck_jobs'); print(time.perf_counter()-t)")
    env = {**os.environ, "PLATFORM_OPS_SETTINGS": str(SANDBOX_SETTINGS), "PYTHONWARNINGS": "ignore"}
    samples = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    baseline = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import dagster; "
                              "print(time.perf_counter()-t)"], env=env, capture_output=True, text=True, check=True)
        baseline.append(float(out.stdout.strip().splitlines()[-1]))
    emit(bench="code_location_load", seconds_median=round(sorted(samples)[1], 3),
         samples=[round(s, 3) for s in samples], target_seconds=6,
         baseline="import dagster alone", baseline_seconds_median=round(sorted(baseline)[1], 3))


def bench_lint_isolation(runs: int = 3) -> None:
    """The promotion lint of the sandbox's DemoFlow package in bubblewrap against the same steps
    unisolated (`lint_isolation: none`, the naive baseline); and redaction over a wide-foreach-sized
    history (6,000 events of 4 KB), the cost of scrubbing what staging wrote before anything
    else reads it."""
    from platform_ops.promotion.lint import lint_package
    from platform_ops.redaction import redact_data
    from platform_ops.sandbox import flows

    blob, _ = flows.code_package()
    seconds: dict[str, list[float]] = {"namespaces": [], "none": []}
    for _ in range(runs):
        for mode in seconds:
            started = time.perf_counter()
            assert lint_package(blob, flows.FLOW_FILE, 300, isolation=mode).passed
            seconds[mode].append(time.perf_counter() - started)
    median = {mode: round(sorted(s)[len(s) // 2], 3) for mode, s in seconds.items()}
    emit(bench="lint_isolation", variant="platform-ops", isolation="namespaces", seconds_median=median["namespaces"],
         baseline_isolation="none", baseline_seconds_median=median["none"],
         overhead_seconds=round(median["namespaces"] - median["none"], 3))
    cause = json.dumps({"Container": {"Command": ["bash", "-c", "x" * 2000],
                                      "Environment": [{"Name": f"K{i}", "Value": "v" * 40} for i in range(30)]}})
    events = [{"id": i, "type": "TaskFailed", "taskFailedEventDetails": {"cause": cause}} for i in range(6000)]
    started = time.perf_counter()
    redact_data(events)
    emit(bench="redaction", events=len(events), megabytes=round(len(cause) * len(events) / 1e6, 1),
         seconds=round(time.perf_counter() - started, 3))


def main() -> None:
    # the latency bench's daemon may leave a launched run writing its history as it is stopped
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        settings = bench_settings(Path(tmp))
        bench_reaper(settings)
        bench_alerts(settings)
        bench_promotion(settings)
        bench_sensor_calls(settings)
        bench_schedule_check(settings)
        bench_long_runs(settings)
        bench_alert_latency(Path(tmp))
    bench_metrics()
    bench_lint_isolation()
    bench_load()



def bench_sensor_calls(settings_path: Path, machines: int = 200) -> None:
    """AWS calls per hour of failure detection at `machines` state machines, both modes: one
    polling tick and one event tick measured (an idle queue, the common case), scaled by the
    sensors' intervals; the event mode adds its reconciliation polls."""
    import dataclasses

    import dagster as dg

    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.code_location import build_defs
    from platform_ops.settings import load_settings

    settings = load_settings(settings_path)
    prod = settings.environments["production"]
    sandbox = SandboxProcess(settings_path)
    try:
        os.environ.update(sandbox.env)
        sandbox.control("reset", {})
        forget_sessions()
        from platform_ops.sandbox.world import account_client

        sfn = account_client(sandbox.env["AWS_ENDPOINT_URL"], "stepfunctions", prod.account_id, prod.region)
        definition = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}})
        for i in range(machines - 1):  # + DemoFlow, already deployed
            sfn.create_state_machine(name=f"mlplatform.prod.Flow{i}Flow", definition=definition,
                                     roleArn=f"arn:aws:iam::{prod.account_id}:role/mf-sfn")
        polled = dataclasses.replace(
            settings, environments={"production": dataclasses.replace(prod, events_queue=None)}, promotion=None)
        evented = dataclasses.replace(polled, environments={
            "production": dataclasses.replace(prod, events_queue="platform-ops-events")})
        per_hour = {}
        for mode, s in (("polling", polled), ("events", evented)):
            defs = build_defs(s)
            with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
                def tick(name, cursor=None, defs=defs, instance=instance):  # this mode's, bound now
                    with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
                        return defs.resolve_sensor_def(name).evaluate_tick(ctx).cursor

                tick("failed_executions_sensor")  # warm: the assumed role
                # without a cursor every environment is due: a full poll (in events mode, a reconcile)
                _, _, poll_calls = timed(lambda: tick("failed_executions_sensor"))
                if mode == "polling":
                    per_hour[mode] = {"calls_per_tick": sum(poll_calls.values()),
                                      "ticks_per_hour": 3600 // s.alerts.interval_seconds}
                    polling = per_hour[mode]
                    polling["calls_per_hour"] = polling["calls_per_tick"] * polling["ticks_per_hour"]
                    continue
                cursor = tick("aws_events_sensor")
                _, _, event_calls = timed(lambda cursor=cursor: tick("aws_events_sensor", cursor))
                reconcile_calls = sum(poll_calls.values())
                ticks = 3600 // s.alerts.events_interval_seconds
                reconciles = 3600 // s.alerts.reconcile_interval_seconds
                per_hour[mode] = {"calls_per_event_tick": sum(event_calls.values()), "event_ticks_per_hour": ticks,
                                  "calls_per_reconcile": reconcile_calls, "reconciles_per_hour": reconciles,
                                  "calls_per_hour": sum(event_calls.values()) * ticks + reconcile_calls * reconciles}
        emit(bench="alerts_calls_per_hour", state_machines=machines, **per_hour,
             baseline="polling every alerts.interval_seconds")
    finally:
        sandbox.stop()


def bench_long_runs(settings_path: Path, queues: int = 50, machines: int = 200, per_queue: int = 40) -> None:
    """long_runs_sensor at `queues` queues and `machines` state machines (one environment): AWS
    calls and time of a steady tick (p95s kept in the instance) and of a tick that lists the
    history again (once per runtime.history_refresh_minutes), beside a naive sensor that lists the
    full history every tick (the same tick with the stored history dropped before it)."""
    import dagster as dg

    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.adapters.ledger import Ledger
    from platform_ops.code_location import build_defs
    from platform_ops.runtime.defs import LEDGER_NAMESPACE, SENSOR
    from platform_ops.sandbox.world import account_client
    from platform_ops.settings import load_settings

    data = yaml.safe_load(settings_path.read_text())
    names = [f"ml-long-{i}" for i in range(queues)]
    # one environment, the home account (the sandbox builds its stack there)
    data["environments"] = {"staging": {**data["environments"]["staging"], "job_queues": names}}
    data.pop("promotion", None)
    data.pop("runtime", None)  # the defaults: every 10 minutes, the history listed hourly
    path = settings_path.with_name("bench-long-runs.yaml")
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path)
    env = settings.environments["staging"]
    sandbox = SandboxProcess(path)
    try:
        os.environ.update(sandbox.env)
        sandbox.control("reset", {})
        forget_sessions()
        sfn = account_client(sandbox.env["AWS_ENDPOINT_URL"], "stepfunctions", env.account_id, env.region)
        definition = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}})
        deployed = len(sfn.list_state_machines()["stateMachines"])  # the sandbox's own DemoFlow deployments
        for i in range(machines - deployed):
            sfn.create_state_machine(name=f"mlplatform.test.b.Flow{i}Flow", definition=definition,
                                     roleArn=f"arn:aws:iam::{env.account_id}:role/mf-sfn")
        for queue in names:  # 40 usual runs of 20 minutes, one task running 2h10m
            common = {"environment": "staging", "queue": queue, "name": "SFN-BenchFlow--train--"}
            sandbox.control("jobs", {**common, "count": per_queue, "started_minutes_ago": 300, "ran_minutes": 20})
            sandbox.control("faults", {"fault": "running", "queue": queue, "name_prefix": "SFN-BenchFlow--train--long",
                                       "remaining": 1})
            sandbox.control("jobs", {**common, "name": "SFN-BenchFlow--train--long", "started_minutes_ago": 130})
        defs = build_defs(settings)
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            def tick(cursor=None):
                with dg.build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
                    return defs.resolve_sensor_def(SENSOR).evaluate_tick(ctx).cursor

            cursor, first_seconds, first_calls = timed(tick)  # history listed, 50 warnings
            _, steady_seconds, steady_calls = timed(lambda: tick(cursor))
            Ledger(instance, namespace=LEDGER_NAMESPACE).put(f"history/{env.name}")  # dropped: due again
            _, naive_seconds, naive_calls = timed(lambda: tick(cursor))
        warned = len(json.loads(cursor)["warned"]["staging"])
        r = settings.runtime
        ticks, refreshes = 60 // r.interval_minutes, max(1, 60 // r.history_refresh_minutes)
        per_hour = sum(steady_calls.values()) * (ticks - refreshes) + sum(naive_calls.values()) * refreshes
        emit(bench="long_runs", queues=queues, state_machines=machines, finished_jobs=queues * per_queue,
             warned=warned, first_tick={"calls": first_calls, "seconds": round(first_seconds, 2)},
             steady_tick={"calls": steady_calls, "seconds": round(steady_seconds, 2)},
             refresh_tick={"calls": sum(naive_calls.values()), "seconds": round(naive_seconds, 2)},
             calls_per_hour=per_hour, ticks_per_hour=ticks,
             baseline={"variant": "naive: the full history listed every tick", "calls_per_tick": naive_calls,
                       "seconds": round(naive_seconds, 2), "calls_per_hour": sum(naive_calls.values()) * ticks})
    finally:
        sandbox.stop()


def bench_schedule_check(settings_path: Path, machines: int = 200) -> None:
    """missed_schedules_sensor at `machines` state machines, each with a Metaflow schedule rule
    (hourly, enabled, no start due yet): AWS calls and time of the first check (no cursor: every
    rule's targets and every last start read) and of a steady one (cursor kept), beside a naive
    check that asks ListRuleNamesByTarget and ListExecutions for every state machine each time."""
    import dataclasses

    import dagster as dg

    from platform_ops.adapters.aws import forget_sessions
    from platform_ops.resources import build_resources
    from platform_ops.sandbox.world import account_client
    from platform_ops.schedules.defs import schedules_tick
    from platform_ops.settings import ScheduleSettings, load_settings

    sandboxed = load_settings(settings_path)
    prod = sandboxed.environments["production"]
    settings = dataclasses.replace(sandboxed, environments={"production": prod}, promotion=None,
                                   schedules=ScheduleSettings())  # every 5 minutes, 30 minutes' grace
    sandbox = SandboxProcess(settings_path)
    try:
        os.environ.update(sandbox.env)
        sandbox.control("reset", {})
        forget_sessions()
        endpoint = sandbox.env["AWS_ENDPOINT_URL"]
        sfn = account_client(endpoint, "stepfunctions", prod.account_id, prod.region)
        events = account_client(endpoint, "events", prod.account_id, prod.region)
        definition = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}})
        arns = [m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]]
        for i in range(machines - len(arns)):
            arns.append(sfn.create_state_machine(name=f"mlplatform.prod.Flow{i}Flow", definition=definition,
                                                 roleArn=f"arn:aws:iam::{prod.account_id}:role/mf-sfn")["stateMachineArn"])
        for arn in arns:  # what Metaflow's @schedule makes on `step-functions create`
            name = arn.rsplit(":", 1)[-1]
            events.put_rule(Name=name, ScheduleExpression="cron(0 * * * ? *)", State="ENABLED")
            events.put_targets(Rule=name, Targets=[{"Id": name, "Arn": arn}])
        resources = build_resources(settings)
        with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
            def check(cursor=None):
                with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
                    return schedules_tick(ctx, settings).cursor

            cursor, first_seconds, first_calls = timed(check)
            _, steady_seconds, steady_calls = timed(lambda: check(cursor))
            product = resources[f"aws_{prod.name}"]
            naive_sfn, naive_events = product.client("stepfunctions"), product.client("events")

            def naive():
                for machine in naive_sfn.list_state_machines(maxResults=1000)["stateMachines"]:
                    naive_events.list_rule_names_by_target(TargetArn=machine["stateMachineArn"])
                    naive_sfn.list_executions(stateMachineArn=machine["stateMachineArn"], maxResults=1)

            _, naive_seconds, naive_calls = timed(naive)
        first_calls.pop("STS.AssumeRole", None)  # the role, once per session
        checks = 60 // settings.schedules.interval_minutes
        # an hourly schedule comes due once an hour: that check asks ListExecutions of each
        per_hour = sum(steady_calls.values()) * checks + machines
        emit(bench="schedule_check", scheduled_state_machines=machines,
             interval_minutes=settings.schedules.interval_minutes,
             first_check={"calls": first_calls, "seconds": round(first_seconds, 2)},
             steady_check={"calls": steady_calls, "seconds": round(steady_seconds, 2)},
             calls_per_hour_hourly_schedules=per_hour, checks_per_hour=checks,
             baseline={"variant": "naive: ListRuleNamesByTarget + ListExecutions per state machine, every check",
                       "calls_per_check": naive_calls, "seconds": round(naive_seconds, 2),
                       "calls_per_hour": sum(naive_calls.values()) * checks})
    finally:
        sandbox.stop()


def _alert_runs_created(home: Path, stopped: dict) -> dict[str, float]:
    """When the first alert run naming each execution was created (the sensor's part of the latency)."""
    from dagster import DagsterInstance
    from dagster._core.storage.dagster_run import RunsFilter

    first: dict[str, float] = {}
    with DagsterInstance.from_config(str(home)) as instance:
        for record in instance.get_run_records(RunsFilter(job_name="alert_failed_executions")):
            config = json.dumps(record.dagster_run.run_config)
            for name in stopped:
                if f":{name}\"" in config:
                    first[name] = min(first.get(name, math.inf), record.create_timestamp.timestamp())
    return first


def bench_alert_latency(tmp: Path, failures: int = 4) -> None:
    """Failure → Slack latency with the Dagster daemon running, both modes at once: production
    event-driven, staging polled (alerts.interval_seconds). Each failure is a Metaflow run whose
    train task runs out of memory; latency = Slack message ts - the execution's stopDate."""
    import statistics

    data = yaml.safe_load(SANDBOX_SETTINGS.read_text())
    data["environments"]["production"]["events_queue"] = "platform-ops-events"
    data["dagster"]["sensors_running"] = True
    data["alerts"].update(silences=[], post_interval_seconds=0)
    settings_path = tmp / "latency-settings.yaml"
    settings_path.write_text(yaml.safe_dump(data))
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    sandbox = SandboxProcess(settings_path)
    daemon = None
    try:
        sandbox.control("reset", {})
        env = {**os.environ, **sandbox.env, "PLATFORM_OPS_SETTINGS": str(settings_path), "DAGSTER_HOME": str(home),
               "PYTHONWARNINGS": "ignore"}
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(ROOT / "workspace.yaml")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(20)  # the daemon loads the code location and starts its sensor loop
        from platform_ops.sandbox.world import account_client

        clients = {name: account_client(sandbox.env["AWS_ENDPOINT_URL"], "stepfunctions", e["account_id"], e["region"])
                   for name, e in data["environments"].items()}
        machines = {"production": "mlplatform.prod.DemoFlow", "staging": "mlplatform.test.feature_x.DemoFlow"}
        stopped: dict[str, tuple[str, float]] = {}
        for i in range(failures):
            for mode, environment in (("events", "production"), ("polling", "staging")):
                name = f"lat-{environment}-{i}"
                e = data["environments"][environment]
                sandbox.control("faults", {"fault": "oom", "account": e["account_id"], "run_id": name, "step": "train",
                                           "index": 0})
                sandbox.control("start-flow", {"environment": environment, "name": name, "width": 1})
                arn = f"arn:aws:states:{e['region']}:{e['account_id']}:execution:{machines[environment]}:{name}"
                [done] = _wait_done(clients[environment], [arn], timeout=120)
                stopped[name] = (mode, done["stopDate"].timestamp())
            time.sleep(7)  # spread the failures over the polling interval
        deadline = time.monotonic() + 180
        seen: dict[str, float] = {}
        while len(seen) < len(stopped) and time.monotonic() < deadline:
            for m in _sink(sandbox, "/_sink/messages")["messages"]:
                for name in stopped:
                    if f"sfn-{name})" in m["text"] and name not in seen:
                        seen[name] = float(m["ts"])
            time.sleep(1)
        created = _alert_runs_created(home, stopped)
        latency: dict[str, list[float]] = {"events": [], "polling": []}
        detect: dict[str, list[float]] = {"events": [], "polling": []}
        for name, (mode, stop) in stopped.items():
            if name in seen:
                latency[mode].append(round(seen[name] - stop, 1))
            if name in created:
                detect[mode].append(round(created[name] - stop, 1))
        result = {mode: {"p50_seconds": statistics.median(v) if v else None, "samples": sorted(v),
                         "alerted": len(v), "failures": failures,
                         "p50_seconds_to_run_request": statistics.median(detect[mode]) if detect[mode] else None}
                  for mode, v in latency.items()}
        result["events"]["target_p50_seconds"] = 15
        result["polling"]["target_p50_seconds"] = data["alerts"]["interval_seconds"] + 15
        emit(bench="alert_latency", daemon="dagster-daemon run (runs launched as subprocesses)",
             events_interval_seconds=data["alerts"].get("events_interval_seconds", 10),
             polling_interval_seconds=data["alerts"]["interval_seconds"], **result)
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, 15)
            daemon.wait(timeout=60)
        sandbox.stop()


if __name__ == "__main__":
    main()
