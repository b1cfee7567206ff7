"""Each moto fix, pinned by the AWS behaviour it reproduces (AWS Batch API reference wording),
exercised over HTTP through real boto3 clients."""

import subprocess
import sys
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from platform_ops.sandbox import moto_internals


def test_moto_internals_are_where_the_sandbox_expects_them():
    moto_internals.apply()  # idempotent; raises naming the internal if a moto upgrade moved it
    import moto

    assert moto.__version__ == moto_internals.MOTO_VERSION


def test_a_moved_internal_fails_loudly(monkeypatch):
    from moto.batch_simple import models

    monkeypatch.delattr(models.BatchSimpleBackend, "_mark_job_as_finished")
    with pytest.raises(RuntimeError, match="has no '_mark_job_as_finished'"):
        moto_internals._require(models.BatchSimpleBackend, "_mark_job_as_finished")


def test_an_internal_whose_parameters_changed_fails_naming_both_signatures(monkeypatch):
    from moto.batch_simple import models

    monkeypatch.setattr(models.BatchSimpleBackend, "_mark_job_as_finished", lambda self, job, attempt=True: None)
    with pytest.raises(RuntimeError) as changed:
        moto_internals._require(models.BatchSimpleBackend, "_mark_job_as_finished")
    assert str(changed.value) == (
        "moto internals changed: moto.batch_simple.models.BatchSimpleBackend._mark_job_as_finished takes "
        "(self, job, attempt); the sandbox is written against moto 5.2.5's (self, include_start_attempt, job)")


def test_a_module_function_is_checked_too(monkeypatch):
    from moto.stepfunctions.parser.asl.utils import json_path

    monkeypatch.setattr(json_path, "extract_json", lambda data, path: None)  # same names, another order
    with pytest.raises(RuntimeError, match=r"json_path.extract_json takes \(data, path\);.*\(path, data\)"):
        moto_internals._require(json_path, "extract_json")
    monkeypatch.setattr(json_path, "extract_json", "not a function")
    with pytest.raises(RuntimeError, match="extract_json takes no signature"):
        moto_internals._require(json_path, "extract_json")


def test_every_recorded_signature_is_checked_against_the_installed_moto():
    """In a fresh process, where nothing is patched yet: every SIGNATURES entry is one `apply()`
    checks (a stale entry would check nothing), and moto 5.2.5 passes them all."""
    code = ("from platform_ops.sandbox import moto_internals as m\n"
            "seen = set()\n"
            "real = m._require\n"
            "def spy(obj, name):\n"
            "    seen.add(f\"{getattr(obj, '__name__', '').rpartition('.')[2]}.{name}\")\n"
            "    return real(obj, name)\n"
            "m._require = spy\n"
            "m.apply()\n"
            "print(sorted(set(m.SIGNATURES) - seen))\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_job_no_instance_type_can_hold_stays_runnable_with_the_reason_aws_infers(world):
    [stuck] = world.submit(vcpus=96)
    [fits] = world.submit(vcpus=2)
    jobs = world.describe("staging", [stuck, fits])
    assert jobs[stuck]["status"] == "RUNNABLE"
    assert jobs[stuck]["statusReason"].startswith("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")
    assert "startedAt" not in jobs[stuck] and jobs[stuck]["attempts"] == []
    assert jobs[fits]["status"] == "SUCCEEDED"


def test_created_at_can_be_backdated(world):
    before = time.time() * 1000
    [job] = world.stuck(minutes=150)
    after = time.time() * 1000
    [summary] = world.batch().list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")["jobSummaryList"]
    # created 150 minutes before the moment it was submitted, however long the submission took
    assert summary["jobId"] == job and int(before) - 150 * 60_000 <= summary["createdAt"] <= after - 150 * 60_000


def test_cancel_job_fails_a_runnable_job_with_reason_and_stopped_at(world):
    """CancelJob: 'Jobs that are in a SUBMITTED, PENDING, or RUNNABLE state are cancelled and the
    job status is updated to FAILED.'"""
    [job] = world.stuck()
    world.batch().cancel_job(jobId=job, reason="platform-ops reaper: test")
    detail = world.describe("staging", [job])[job]
    assert detail["status"] == "FAILED"
    assert detail["statusReason"] == "platform-ops reaper: test"
    assert detail["stoppedAt"] >= detail["createdAt"]
    assert detail["isCancelled"] is True


def test_cancel_job_leaves_a_starting_job_alone_but_terminate_kills_it(world):
    """CancelJob: 'Jobs that progressed to the STARTING or RUNNING state aren't cancelled. However,
    the API operation still succeeds.' TerminateJob: 'Jobs that are in the STARTING or RUNNING
    state are terminated, which causes them to transition to FAILED.'"""
    [job] = world.stuck()
    world.set_status("staging", job, "STARTING")
    world.batch().cancel_job(jobId=job, reason="too late")
    assert world.describe("staging", [job])[job]["status"] == "STARTING"
    world.batch().terminate_job(jobId=job, reason="operator")
    detail = world.describe("staging", [job])[job]
    assert (detail["status"], detail["statusReason"], detail["isTerminated"]) == ("FAILED", "operator", True)


def test_cancel_jobs_bulk_semantics(world):
    """CancelJobs: up to 50 ids and one reason; per-job successful/errors; unknown ids count as
    successful; STARTING/RUNNING jobs are not cancelled."""
    batch = world.batch()
    stuck = world.stuck(count=3)
    world.set_status("staging", stuck[2], "STARTING")
    response = batch.cancel_jobs(jobs=[*stuck, "00000000-0000-0000-0000-000000000000"], reason="bulk")
    assert sorted(response["successful"]) == sorted([*stuck, "00000000-0000-0000-0000-000000000000"])
    assert response["errors"] == []
    statuses = {k: v["status"] for k, v in world.describe("staging", stuck).items()}
    assert statuses == {stuck[0]: "FAILED", stuck[1]: "FAILED", stuck[2]: "STARTING"}
    with pytest.raises(ClientError, match="50"):
        batch.cancel_jobs(jobs=[f"id-{i}" for i in range(51)], reason="too many")


def test_list_jobs_paginates_and_defaults_to_running(world):
    """ListJobs: with jobStatus, up to 1000 a page and a nextToken; 'If you don't specify a status,
    only RUNNING jobs are returned.'"""
    world.stuck(count=2500, minutes=5)
    batch = world.batch()
    pages = []
    kwargs = {"jobQueue": "ml-staging", "jobStatus": "RUNNABLE", "maxResults": 1000}
    while True:
        page = batch.list_jobs(**kwargs)
        pages.append(len(page["jobSummaryList"]))
        if "nextToken" not in page:
            break
        kwargs["nextToken"] = page["nextToken"]
    assert pages == [1000, 1000, 500]
    assert len(batch.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE", maxResults=5000)["jobSummaryList"]) == 1000
    world.submit(count=2)  # SUCCEEDED
    assert batch.list_jobs(jobQueue="ml-staging")["jobSummaryList"] == []


def test_describe_jobs_takes_at_most_100_ids(world):
    """DescribeJobs: 'A list of up to 100 job IDs.'"""
    ids = world.stuck(count=101)
    with pytest.raises(ClientError, match="Maximum number of jobs supported is 100"):
        world.batch().describe_jobs(jobs=ids)
    assert len(world.batch().describe_jobs(jobs=ids[:100])["jobs"]) == 100


def test_two_accounts_production_through_assume_role(world):
    resources = world.resources()
    staging_id = resources["aws_staging"].client("sts").get_caller_identity()
    production_id = resources["aws_production"].client("sts").get_caller_identity()
    assert staging_id["Account"] == "111111111111"
    assert production_id["Account"] == "222222222222"
    assert production_id["Arn"] == "arn:aws:sts::222222222222:assumed-role/platform-ops/platform-ops"
    [prod_job] = world.stuck("production")
    assert world.batch("staging").describe_jobs(jobs=[prod_job])["jobs"] == []
    with pytest.raises(ClientError, match="ml-staging does not exist"):
        world.batch("production").list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")


@pytest.mark.parametrize("fault, exit_code, container_reason", [
    ("oom", 137, "OutOfMemoryError: Container killed due to memory usage"),
    ("exit_1", 1, None),
    ("spot", None, "Host EC2 (instance i-0a1b2c3d4e5f60718) terminated."),
])
def test_injected_task_failures_look_like_batch_reports_them(world, fault, exit_code, container_reason):
    world.fault(fault=fault, account="222222222222", remaining=1)
    [failed, ok] = world.submit("production", count=2)
    jobs = world.describe("production", [failed, ok])
    assert jobs[ok]["status"] == "SUCCEEDED"
    job = jobs[failed]
    assert job["status"] == "FAILED"
    assert job["container"].get("exitCode") == exit_code
    assert job["attempts"][-1]["container"].get("reason") == container_reason


def test_failed_task_logs_are_readable_in_cloudwatch_logs(world):
    world.fault(fault="exit_1", remaining=1)
    [job] = world.submit()
    stream = world.describe("staging", [job])[job]["attempts"][-1]["container"]["logStreamName"]
    logs = world.resources()["aws_staging"].client("logs")
    events = logs.get_log_events(logGroupName="/aws/batch/job", logStreamName=stream, startFromHead=True)["events"]
    assert events[-1]["message"] == "ValueError: training data is empty"


def test_a_client_with_unknown_keys_lands_in_staging_not_moto_default(sandbox):
    sts = boto3.client("sts", endpoint_url=sandbox.endpoint, region_name="us-east-1",
                       aws_access_key_id="whoever", aws_secret_access_key="x")
    assert sts.get_caller_identity()["Account"] == "111111111111"


def test_jobs_can_be_left_in_every_in_flight_state(world):
    """Dashboards need jobs in every state; the fake scheduler can hold one anywhere on the way."""
    for fault in ("submitted", "pending", "starting", "running"):
        world.fault(fault=fault, remaining=1)
    ids = world.submit(count=4)
    jobs = world.describe("staging", ids)
    assert [jobs[i]["status"] for i in ids] == ["SUBMITTED", "PENDING", "STARTING", "RUNNING"]
    assert "startedAt" in jobs[ids[3]] and "stoppedAt" not in jobs[ids[3]]
    listed = world.batch().list_jobs(jobQueue="ml-staging")["jobSummaryList"]  # no status: RUNNING only
    assert [j["jobId"] for j in listed] == [ids[3]]


def test_a_task_can_run_for_a_while_before_it_fails(world):
    """Tasks take time: with after_seconds the job is RUNNING until its time is up, then ends as
    the fault says. The test says when the time is up (time-up), so no machine is too slow."""
    world.fault(fault="exit_1", remaining=1, after_seconds=24 * 3600)
    [job] = world.submit()
    assert world.describe("staging", [job])[job]["status"] == "RUNNING"
    assert world.control("time-up", {"job_ids": [job]}) == {"ended": [job]}
    detail = world.describe("staging", [job])[job]
    assert (detail["status"], detail["container"]["exitCode"]) == ("FAILED", 1)
    assert world.control("time-up", {}) == {"ended": []}  # each job ends once


def test_a_task_ends_by_itself_when_its_time_is_up(world):
    world.fault(fault="oom", remaining=1, after_seconds=0.2)
    [job] = world.submit()
    deadline = time.monotonic() + 120  # the timer fires after 0.2 s; the deadline is for a busy machine
    while (detail := world.describe("staging", [job])[job])["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.1)
    assert (detail["status"], detail["container"]["exitCode"]) == ("FAILED", 137)
