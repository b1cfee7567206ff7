"""The sandbox's AWS faults have each service's real error shape, so botocore sees what it would
see from AWS: throttling it retries, an AccessDenied it does not."""

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(world, service):
    return boto3.client(service, endpoint_url=world.sandbox.endpoint, region_name="us-east-1", config=NO_RETRY)


@pytest.mark.parametrize("service, signing_name, call, code", [
    ("batch", "batch", lambda c: c.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE"), "TooManyRequestsException"),
    ("stepfunctions", "states", lambda c: c.list_state_machines(), "ThrottlingException"),
    ("cloudwatch", "monitoring", lambda c: c.list_dashboards(), "Throttling"),
])
def test_throttling_is_3_calls_in_10_never_two_in_a_row(world, service, signing_name, call, code):
    world.control("aws-faults", {"kind": "throttle", "services": [signing_name]})
    c = client(world, service)
    outcomes = []
    for _ in range(20):
        try:
            call(c)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])
    assert outcomes.count(code) == 6 and outcomes.count("ok") == 14
    assert all(not (a == b == code) for a, b in zip(outcomes, outcomes[1:], strict=False))
    retried = boto3.client(service, endpoint_url=world.sandbox.endpoint, region_name="us-east-1",
                           config=Config(retries={"total_max_attempts": 3, "mode": "standard"}))
    for _ in range(10):
        call(retried)  # standard retries get every call through


def test_throttling_comes_in_bursts_and_every_retry_is_counted(world):
    """AWS throttles several calls in a row while a bucket is empty: the BURSTS pattern does, per
    service; the product's clients ride out every burst, and the sandbox counts their retries."""
    from platform_ops.sandbox.aws_faults import BURSTS

    world.control("aws-faults", {"kind": "throttle", "services": ["batch", "states"], "pattern": BURSTS})
    bare = client(world, "batch")
    outcomes = []
    for _ in range(len(BURSTS)):
        try:
            bare.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")
            outcomes.append(".")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "TooManyRequestsException"
            outcomes.append("x")
    assert "".join(outcomes) == BURSTS and "xxx" in BURSTS and BURSTS.count("x") * 10 == len(BURSTS) * 3
    faults = world.sandbox.aws_faults
    assert faults.counts() == {"batch": 6, "states": 0} and faults.retries() == {"batch": 0, "states": 0}
    batch = world.resources()["aws_staging"].client("batch")  # the product's client, its retry policy
    for _ in range(10):
        batch.list_jobs(jobQueue="ml-staging", jobStatus="RUNNABLE")
    # from the pattern's start: the 1st call refused twice, 4 through, the 6th refused 3 times, the 7th once
    assert faults.counts() == {"batch": 6 + 6, "states": 0} and faults.retries() == {"batch": 6, "states": 0}


def test_a_broken_role_is_access_denied_and_other_roles_are_not(world):
    world.control("aws-faults", {"kind": "deny-assume-role", "account": "222222222222"})
    sts = client(world, "sts")
    with pytest.raises(ClientError) as denied:
        sts.assume_role(RoleArn="arn:aws:iam::222222222222:role/platform-ops", RoleSessionName="test",
                        ExternalId="sandbox-external-id")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert sts.assume_role(RoleArn="arn:aws:iam::333333333333:role/other", RoleSessionName="test")["Credentials"]


def test_unknown_faults_are_refused_with_the_reason(world):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        world.control("aws-faults", {"kind": "throttle", "services": ["s3"]})
    assert b"cannot throttle ['s3']" in refused.value.read()
