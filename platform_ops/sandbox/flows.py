"""Metaflow-shaped Step Functions deployments in the sandbox.

The definitions are the real ones Metaflow 2.19.38 generated for `demoflow.py` (@project
mlplatform; start, a foreach over `train` with @retry(times=2), join, end) with `python demoflow.py
--branch feature_x step-functions create --only-json` (sm_branch.json) and `--production`
(sm_prod_full.json), METAFLOW_BATCH_EMIT_TAGS=true, user alice, us-east-1. Generated against fake
values (account 111122223333, queue mf-queue, job definition metaflow_0123abcd:1, datastore
s3://mf-bucket/metaflow, DynamoDB table metaflow-sfn-table, code SHA 0123...4567 as a placeholder),
which `definition_for` points at the sandbox account's. Names follow Metaflow's @project scheme.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platform_ops.sandbox.accounts import JOB_DEFINITION, account_client
from platform_ops.settings import EnvironmentSettings

HERE = Path(__file__).parent / "metaflow"
FIXTURE_ACCOUNT = "111122223333"
FIXTURE_QUEUE = "mf-queue"
FIXTURE_JOB_DEFINITION = "metaflow_0123abcd:1"
FIXTURE_BUCKET = "mf-bucket"
FIXTURE_CODE_SHA = "0123456789abcdef0123456789abcdef01234567"
DYNAMO_TABLE = "metaflow-sfn-table"
FLOW_FILE = "demoflow.py"


@dataclass(frozen=True)
class FlowDeployment:
    name: str  # state machine name, e.g. mlplatform.prod.DemoFlow
    template: str  # file under sandbox/metaflow/


# What each environment runs: a branch deployment in staging, the production one in production.
DEPLOYMENTS = {
    "staging": FlowDeployment("mlplatform.test.feature_x.DemoFlow", "sm_branch.json"),
    "production": FlowDeployment("mlplatform.prod.DemoFlow", "sm_prod_full.json"),
}


@dataclass(frozen=True)
class ScheduledDeployment:
    """A deployment of a flow with Metaflow's @schedule: its state machine and its schedule rule."""

    deployment: FlowDeployment
    expression: str  # the rule's ScheduleExpression, as @schedule writes it


# A scheduled deployment nobody starts (the sandbox fires no EventBridge rule), so its first fire
# time goes unanswered: five minutes after the world is made, and missed_schedules_sensor says so
# once schedules.grace_minutes have passed (the sandbox's settings: the demo shows it about 8 minutes
# in). In staging, not production: moto 5.2.5 offers every event on a default bus to its schedule
# rules too and raises on their Step Functions target (AWS never matches an event to a schedule
# rule), and production's bus carries the service events of the event-driven account.
SCHEDULED = {
    "staging": ScheduledDeployment(FlowDeployment("mlplatform.test.nightly.DemoFlow", "sm_branch.json"),
                                   "rate(5 minutes)"),
}


def datastore_bucket(env: EnvironmentSettings) -> str:
    """Each account's Metaflow datastore (METAFLOW_DATASTORE_SYSROOT_S3 = s3://<this>/metaflow)."""
    return f"mf-{env.name}"


def code_package(source: str | None = None) -> tuple[bytes, str]:
    """A Metaflow code package of the flow (the tarball Metaflow uploads; byte-stable, so its
    content address is too) and its SHA-1."""
    data = (source if source is not None else (HERE / FLOW_FILE).read_text()).encode()
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo(FLOW_FILE)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    blob = raw.getvalue()
    return blob, hashlib.sha1(blob).hexdigest()


def upload_code_package(endpoint: str, env: EnvironmentSettings, source: str | None = None) -> str:
    """Put the package where Metaflow would (<sysroot>/<Flow>/data/<sha[:2]>/<sha>); its SHA-1."""
    blob, sha = code_package(source)
    s3 = account_client(endpoint, "s3", env.account_id, env.region)
    s3.put_object(Bucket=datastore_bucket(env), Key=f"metaflow/DemoFlow/data/{sha[:2]}/{sha}", Body=blob)
    return sha


def definition_for(env: EnvironmentSettings, template: str, max_workers: int | None = None,
                   code_sha: str = FIXTURE_CODE_SHA) -> str:
    text = (HERE / template).read_text()
    if max_workers:  # `step-functions create --max-workers N`
        text = text.replace('"MaxConcurrency": 100', f'"MaxConcurrency": {max_workers}')
    text = text.replace(f"data/01/{FIXTURE_CODE_SHA}", f"data/{code_sha[:2]}/{code_sha}")
    text = text.replace(FIXTURE_CODE_SHA, code_sha).replace(f"{FIXTURE_BUCKET}/", f"{datastore_bucket(env)}/")
    text = text.replace(f'\\"{FIXTURE_BUCKET}\\"', f'\\"{datastore_bucket(env)}\\"')
    text = text.replace(FIXTURE_JOB_DEFINITION, f"{JOB_DEFINITION}:1")
    text = text.replace(f'"JobQueue": "{FIXTURE_QUEUE}"', f'"JobQueue": "{env.job_queues[0]}"')
    text = text.replace(f"queue={FIXTURE_QUEUE},", f"queue={env.job_queues[0]},")
    text = text.replace(FIXTURE_ACCOUNT, env.account_id).replace("us-east-1", env.region)
    return text


def deploy(endpoint: str, env: EnvironmentSettings, deployment: FlowDeployment | None = None,
           max_workers: int | None = None, source: str | None = None) -> str | None:
    """Create the DynamoDB table Metaflow's foreach needs (once), the code package (`source`, the
    flow file, else demoflow.py) and a flow deployment, published as version 1; its ARN. Without
    `deployment`: the environment's own, and its scheduled one (SCHEDULED) beside it."""
    default = deployment is None
    deployment = deployment or DEPLOYMENTS.get(env.name)
    if deployment is None or not env.job_queues:
        return None
    dynamodb = account_client(endpoint, "dynamodb", env.account_id, env.region)
    if DYNAMO_TABLE not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(TableName=DYNAMO_TABLE, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "pathspec", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "pathspec", "AttributeType": "S"}])
    sha = upload_code_package(endpoint, env, source)
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    arn = _create(sfn, env, deployment, max_workers, sha)
    scheduled = SCHEDULED.get(env.name) if default else None
    if scheduled is not None:  # the estate's own: deployed with it, as the world is made
        schedule(endpoint, env, _create(sfn, env, scheduled.deployment, None, sha), scheduled.expression)
    return arn


def _create(sfn: Any, env: EnvironmentSettings, deployment: FlowDeployment, max_workers: int | None,
            sha: str) -> str:
    return sfn.create_state_machine(
        name=deployment.name, definition=definition_for(env, deployment.template, max_workers, sha),
        roleArn=f"arn:aws:iam::{env.account_id}:role/mf-sfn", publish=True, versionDescription="deployed by Metaflow",
    )["stateMachineArn"]


def schedule(endpoint: str, env: EnvironmentSettings, state_machine_arn: str, expression: str) -> str:
    """What `step-functions create` does for a flow with @schedule (metaflow 2.19,
    event_bridge_client.py): a rule on the default bus named after the state machine (its names
    here are short: no hash suffix), ENABLED, with the state machine as its one target and
    Metaflow's input. The rule's name."""
    name = state_machine_arn.rsplit(":", 1)[-1]
    events = account_client(endpoint, "events", env.account_id, env.region)
    events.put_rule(Name=name, ScheduleExpression=expression, State="ENABLED",
                    Description=f"Metaflow generated rule for {name}")
    events.put_targets(Rule=name, Targets=[{"Id": name, "Arn": state_machine_arn,
                                            "Input": json.dumps({"Parameters": json.dumps({})}),
                                            "RoleArn": f"arn:aws:iam::{env.account_id}:role/mf-events"}])
    return name


def run_to_end(endpoint: str, env: EnvironmentSettings, name: str, width: int = 3, timeout: float = 180,
               state_machine: str | None = None) -> dict:
    """Trigger a run and wait until it stops; DescribeExecution's answer. A run takes seconds;
    `timeout` is a deadline for a very busy machine, not an expectation."""
    trigger(endpoint, env, width=width, name=name, state_machine=state_machine)
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    arn = (f"arn:aws:states:{env.region}:{env.account_id}:execution:"
           f"{state_machine or DEPLOYMENTS[env.name].name}:{name}")
    deadline = time.monotonic() + timeout
    while (description := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still RUNNING after {timeout}s")
        time.sleep(0.2)
    return description


def trigger(endpoint: str, env: EnvironmentSettings, width: int = 3, name: str | None = None,
            state_machine: str | None = None) -> str:
    """Start a run the way `step-functions trigger` does; `width` is how many `train` tasks the
    foreach fans out to (the sandbox plays the flow's code). Returns the execution name."""
    arn = (f"arn:aws:states:{env.region}:{env.account_id}:stateMachine:"
           f"{state_machine or DEPLOYMENTS[env.name].name}")
    name = name or str(uuid.uuid4())
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    sfn.start_execution(stateMachineArn=arn, name=name,
                        input=json.dumps({"Parameters": json.dumps({"alpha": 0.5, "width": width})}))
    return name


def redeploy(endpoint: str, env: EnvironmentSettings, source: str) -> str:
    """`step-functions create` again after a code change: a new code package, the state machine
    updated to point at it. Returns the new package's SHA-1."""
    deployment = DEPLOYMENTS[env.name]
    sha = upload_code_package(endpoint, env, source)
    sfn = account_client(endpoint, "stepfunctions", env.account_id, env.region)
    sfn.update_state_machine(stateMachineArn=f"arn:aws:states:{env.region}:{env.account_id}:stateMachine:"
                                             f"{deployment.name}",
                             definition=definition_for(env, deployment.template, code_sha=sha), publish=True)
    return sha
