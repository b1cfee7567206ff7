"""`fail-operation`: one operation answers an error in its service's shape; botocore does not
retry AccessDenied, so the caller's step fails at once, and only the calls the rule names."""

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

RETRYING = Config(retries={"total_max_attempts": 3, "mode": "standard"})


def client(world, service):
    return boto3.client(service, endpoint_url=world.sandbox.endpoint, region_name="us-east-1", config=RETRYING)


def code(call):
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"]
    return "ok"


def test_one_step_functions_operation_fails_the_given_number_of_times(world):
    sfn = client(world, "stepfunctions")
    arn = sfn.list_state_machines()["stateMachines"][0]["stateMachineArn"]
    world.control("aws-faults", {"kind": "fail-operation", "service": "states", "operation": "DescribeStateMachine",
                                 "match": arn, "times": 1})
    assert code(lambda: sfn.list_state_machines()) == "ok"  # another operation
    assert code(lambda: sfn.describe_state_machine(stateMachineArn=arn)) == "AccessDeniedException"  # not retried
    assert code(lambda: sfn.describe_state_machine(stateMachineArn=arn)) == "ok"  # times: 1


def test_an_s3_object_operation_fails_in_s3s_xml_shape_only_where_it_matches(world):
    s3 = client(world, "s3")
    world.control("aws-faults", {"kind": "fail-operation", "service": "s3", "operation": "PutObject",
                                 "match": "mf-production/"})
    assert code(lambda: s3.put_object(Bucket="mf-production", Key="a/b", Body=b"x")) == "AccessDenied"
    assert code(lambda: s3.put_object(Bucket="mf-production", Key="a/b", Body=b"x")) == "AccessDenied"  # until reset
    assert code(lambda: s3.put_object(Bucket="mf-staging", Key="a/b", Body=b"x")) == "ok"
    assert code(lambda: s3.get_object(Bucket="mf-staging", Key="a/b")) == "ok"


def test_an_unknown_code_is_refused(world):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        world.control("aws-faults", {"kind": "fail-operation", "service": "states", "operation": "X", "code": "Nope"})
    assert b"fail-operation: code must be one of" in refused.value.read()
