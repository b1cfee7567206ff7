"""AWS's per-API token buckets in the sandbox (quotas.py): the bucket on a fake clock, then over
the wire, where every account has its own buckets and an empty one answers the service's own
throttling error, which botocore retries as it would against AWS. No test waits on a real clock:
the sandbox's clock is a fake the test moves (per retry attempt, where a retry needs time)."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from platform_ops.sandbox.quotas import QUOTAS, Quota, Quotas, TokenBucket

STAGING, PRODUCTION = "111111111111", "222222222222"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})
RETRY = Config(retries={"total_max_attempts": 3, "mode": "standard"})


# ---- the bucket and the table, on a fake clock ----

def test_a_burst_of_exactly_the_capacity_passes_and_the_next_call_is_refused():
    bucket = TokenBucket(capacity=10, refill=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(10)] == [True] * 10
    assert bucket.take(0.0) is False


def test_after_t_seconds_refill_times_t_more_calls_pass_and_never_more_than_the_capacity():
    bucket = TokenBucket(capacity=10, refill=2, now=0.0)
    for _ in range(10):
        bucket.take(0.0)
    assert [bucket.take(3.0) for _ in range(7)] == [True] * 6 + [False]  # 2/s × 3 s = 6
    assert bucket.take(3.4) is False and bucket.take(3.5) is True  # 0.8 tokens, then 1.0
    assert sum(bucket.take(1000.0) for _ in range(20)) == 10  # a long pause refills to the brim, no more


def test_buckets_are_per_account_and_per_api():
    quotas = Quotas()
    capacity = QUOTAS["states"]["ListExecutions"].capacity  # 200 in us-east-1
    assert all(quotas.take(STAGING, "states", "ListExecutions", 0.0) for _ in range(int(capacity)))
    assert quotas.take(STAGING, "states", "ListExecutions", 0.0) is False
    assert quotas.take(PRODUCTION, "states", "ListExecutions", 0.0) is True  # its own bucket
    assert quotas.take(STAGING, "states", "DescribeExecution", 0.0) is True  # another API's bucket
    assert quotas.report() == {
        STAGING: {"states:ListExecutions": {"taken": 200, "throttled": 1},
                  "states:DescribeExecution": {"taken": 1, "throttled": 0}},
        PRODUCTION: {"states:ListExecutions": {"taken": 1, "throttled": 0}},
    }


def test_batch_has_one_bucket_for_all_its_apis_per_account():
    quotas = Quotas(scale=0.1)  # 50 × 0.1 = 5 calls
    calls = ["ListJobs", "DescribeJobs", "SubmitJob", "CancelJob", "ListJobs"]
    assert [quotas.take(STAGING, "batch", op, 0.0) for op in calls] == [True] * 5
    assert quotas.take(STAGING, "batch", "DescribeJobs", 0.0) is False  # emptied by the other APIs
    assert quotas.take(PRODUCTION, "batch", "DescribeJobs", 0.0) is True
    assert quotas.report()[STAGING]["batch:ListJobs"] == {"taken": 2, "throttled": 0}
    assert quotas.report()[STAGING]["batch:DescribeJobs"] == {"taken": 1, "throttled": 1}


def test_other_regions_get_their_smaller_buckets_and_unlisted_apis_are_not_throttled():
    quotas = Quotas(scale=0.01)  # ListExecutions: 200 -> 2 in us-east-1, 100 -> 1 in eu-central-1
    assert sum(quotas.take(STAGING, "states", "ListExecutions", 0.0, "us-east-1") for _ in range(5)) == 2
    assert sum(quotas.take(STAGING, "states", "ListExecutions", 0.0, "eu-central-1") for _ in range(5)) == 1
    assert all(quotas.take(STAGING, "states", "TagResource", 0.0) for _ in range(1000))
    assert "states:TagResource" not in quotas.report()[STAGING]


def test_scale_multiplies_size_and_refill_and_refill_scale_sets_the_refill_apart():
    quotas = Quotas(scale=0.025, refill_scale=0.0)  # ListExecutions 200/5 -> 5, no refill at all
    assert sum(quotas.take(STAGING, "states", "ListExecutions", t) for t in range(100)) == 5
    assert Quota(200, 5, (100, 2)).in_region("ap-south-1") == (100, 2)


# ---- over the wire ----

@pytest.fixture
def quotas(world):
    """The sandbox's quota layer on a fake clock the test moves; disarmed after the test."""
    layer = world.sandbox.aws_faults.quotas
    clock = {"now": 1000.0}
    yield layer, clock
    layer.reset()


def arm(world, layer, clock, **fault):
    world.control("aws-faults", {"kind": "quotas", **fault})
    layer.clock = lambda: clock["now"]


def counters(world) -> dict:
    with urllib.request.urlopen(f"{world.sandbox.endpoint}/_sandbox/quota-counters") as resp:
        return json.load(resp)


def client(world, service, account=None, config=NO_RETRY):
    c = boto3.client(service, endpoint_url=world.sandbox.endpoint, region_name="us-east-1", config=config,
                     aws_access_key_id="sandbox", aws_secret_access_key="sandbox")
    if account:  # the sandbox's way into an account: moto's x-moto-account-id header
        c.meta.events.register("before-sign", lambda request, **_: request.headers.__setitem__(
            "x-moto-account-id", account))
    return c


def code(call) -> str:
    try:
        call()
        return "ok"
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def test_off_by_default_nothing_is_throttled_or_counted(world):
    sfn = client(world, "stepfunctions")
    arn = sfn.list_state_machines()["stateMachines"][0]["stateMachineArn"]
    assert [code(lambda: sfn.list_executions(stateMachineArn=arn)) for _ in range(10)] == ["ok"] * 10
    assert counters(world) == {} and world.sandbox.aws_faults.quotas.quotas is None


def test_a_burst_is_throttled_after_exactly_the_capacity_and_another_account_still_passes(world, quotas):
    layer, clock = quotas
    staging, production = client(world, "stepfunctions"), client(world, "stepfunctions", PRODUCTION)
    arns = {c: c.list_state_machines()["stateMachines"][0]["stateMachineArn"] for c in (staging, production)}
    arm(world, layer, clock, scale=0.025)  # ListExecutions in us-east-1: 200/5 -> a bucket of 5, 0.125/s
    burst = [code(lambda: staging.list_executions(stateMachineArn=arns[staging])) for _ in range(7)]
    assert burst == ["ok"] * 5 + ["ThrottlingException"] * 2
    assert [code(lambda: production.list_executions(stateMachineArn=arns[production])) for _ in range(5)] == \
        ["ok"] * 5
    clock["now"] += 8  # 0.125/s × 8 s: one more call
    assert [code(lambda: staging.list_executions(stateMachineArn=arns[staging])) for _ in range(2)] == \
        ["ok", "ThrottlingException"]
    assert counters(world) == {STAGING: {"states:ListExecutions": {"taken": 6, "throttled": 3}},
                               PRODUCTION: {"states:ListExecutions": {"taken": 5, "throttled": 0}}}
    world.control("reset", {})
    assert counters(world) == {}  # a reset disarms the mode
    assert all(code(lambda: staging.list_state_machines()) == "ok" for _ in range(10))


def _setup_logs(world):
    logs = client(world, "logs")
    logs.create_log_group(logGroupName="/quotas/test")
    logs.create_log_stream(logGroupName="/quotas/test", logStreamName="s")


_NOW = datetime.now(UTC)
# (boto3 service, signing name, operation, a call that succeeds, the throttling error AWS answers)
CALLS = [
    ("stepfunctions", "states", "ListStateMachines", lambda c: c.list_state_machines(), "ThrottlingException"),
    ("batch", "batch", "ListJobs", lambda c: c.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE"),
     "TooManyRequestsException"),
    ("cloudwatch", "monitoring", "GetMetricData", lambda c: c.get_metric_data(
        MetricDataQueries=[{"Id": "m", "MetricStat": {"Metric": {"Namespace": "AWS/States", "MetricName": "X"},
                                                      "Period": 60, "Stat": "Sum"}}],
        StartTime=_NOW - timedelta(hours=1), EndTime=_NOW), "Throttling"),
    ("logs", "logs", "GetLogEvents", lambda c: c.get_log_events(logGroupName="/quotas/test", logStreamName="s"),
     "ThrottlingException"),
    ("events", "events", "ListRules", lambda c: c.list_rules(), "ThrottlingException"),
    ("sts", "sts", "AssumeRole", lambda c: c.assume_role(RoleArn="arn:aws:iam::333333333333:role/other",
                                                         RoleSessionName="quotas"), "Throttling"),
]


@pytest.mark.parametrize("service, signing, operation, call, throttled", CALLS, ids=[c[2] for c in CALLS])
def test_each_service_answers_its_own_throttling_error_and_botocore_retries_it(
        world, quotas, service, signing, operation, call, throttled):
    layer, clock = quotas
    if service == "logs":
        _setup_logs(world)
    quota = QUOTAS[signing].get(operation) or QUOTAS[signing]["*"]
    arm(world, layer, clock, scale=1 / quota.capacity)  # a bucket of one call
    half_a_token = 0.5 / (quota.refill / quota.capacity)  # seconds
    bare, retrying = client(world, service), client(world, service, config=RETRY)
    assert [code(lambda: call(bare)), code(lambda: call(bare))] == ["ok", throttled]

    def time_passes(**_):  # each attempt comes half a token later: the 1st is refused, the retry passes
        clock["now"] += half_a_token

    retrying.meta.events.register("before-send", time_passes)
    assert call(retrying)["ResponseMetadata"]["RetryAttempts"] == 1
    assert counters(world) == {STAGING: {f"{signing}:{operation}": {"taken": 2, "throttled": 2}}}


def test_batch_shares_one_bucket_across_its_apis_over_the_wire(world, quotas):
    layer, clock = quotas
    ids = world.submit("staging", count=1)
    arm(world, layer, clock, scale=0.1)  # 50 × 0.1: 5 Batch calls per account
    batch = client(world, "batch")
    calls = [lambda: batch.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE"),
             lambda: batch.describe_jobs(jobs=ids)] * 3
    assert [code(c) for c in calls] == ["ok"] * 5 + ["TooManyRequestsException"]
    assert code(lambda: client(world, "batch", PRODUCTION).describe_jobs(jobs=ids)) == "ok"
    assert counters(world) == {STAGING: {"batch:ListJobs": {"taken": 3, "throttled": 0},
                                         "batch:DescribeJobs": {"taken": 2, "throttled": 1}},
                               PRODUCTION: {"batch:DescribeJobs": {"taken": 1, "throttled": 0}}}


def test_step_functions_own_calls_into_batch_are_exempt(world, quotas):
    """moto's interpreter signs its integration calls with key "ak": AWS retries its integrations,
    moto's callback client never does, so they are not throttled (nor counted)."""
    layer, clock = quotas
    arm(world, layer, clock, scale=0.02)  # a Batch bucket of one call
    batch = client(world, "batch")
    assert [code(lambda: batch.list_jobs(jobQueue="ml-staging")) for _ in range(2)] == \
        ["ok", "TooManyRequestsException"]
    interpreter = boto3.client("batch", endpoint_url=world.sandbox.endpoint, region_name="us-east-1",
                               config=NO_RETRY, aws_access_key_id="ak", aws_secret_access_key="sk")
    assert all(code(lambda: interpreter.list_jobs(jobQueue="ml-staging")) == "ok" for _ in range(5))
    assert counters(world) == {STAGING: {"batch:ListJobs": {"taken": 1, "throttled": 1}}}


def test_assumed_role_calls_count_against_the_role_account(world, quotas):
    """The account is the one the credentials belong to, as moto decides it: an assumed role's keys
    act (and are throttled) in the role's account, not the caller's."""
    layer, clock = quotas
    env = world.settings.environments["production"]
    creds = client(world, "sts").assume_role(RoleArn=env.role_arn, RoleSessionName="quotas",
                                             ExternalId=env.role_external_id)["Credentials"]
    arm(world, layer, clock, scale=0.02)
    batch = boto3.client("batch", endpoint_url=world.sandbox.endpoint, region_name="us-east-1", config=NO_RETRY,
                         aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                         aws_session_token=creds["SessionToken"])
    queue = env.job_queues[0]
    assert [code(lambda: batch.list_jobs(jobQueue=queue)) for _ in range(2)] == ["ok", "TooManyRequestsException"]
    assert code(lambda: client(world, "batch").list_jobs(jobQueue="ml-staging")) == "ok"  # staging's bucket
    assert counters(world) == {PRODUCTION: {"batch:ListJobs": {"taken": 1, "throttled": 1}},
                               STAGING: {"batch:ListJobs": {"taken": 1, "throttled": 0}}}
