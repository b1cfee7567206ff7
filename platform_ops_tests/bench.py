"""`make bench`: speed and API cost, as JSON lines, each beside a naive baseline from the same run.

Reaper: 10,000 RUNNABLE jobs over 5 queues, 200 of them past the threshold, in the sandbox (run
in its own process, as AWS would be). Measures the sensor tick and the reap runs of platform-ops
against a naive reaper that describes every RUNNABLE job and cancels one by one. Also the time to
load the code location (import + Definitions).
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
from datetime import datetime, timedelta, timezone
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
    now = datetime.now(timezone.utc)
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
    emit(bench="code_location_load", seconds_median=round(sorted(samples)[1], 3), samples=[round(s, 3) for s in samples],
         target_seconds=6, baseline="import dagster alone", baseline_seconds_median=round(sorted(baseline)[1], 3))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_reaper(bench_settings(Path(tmp)))
    bench_load()


if __name__ == "__main__":
    main()
