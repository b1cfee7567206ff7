"""The sandbox's AWS estate, created through the AWS API like a platform team's IaC would.

Per environment of the settings: IAM roles, a MANAGED EC2 compute environment (m5 instances up
to 8 vCPU / 32 GiB, maxvCpus 256), the watched job queues, a Metaflow-style job definition and
datastore bucket, and platform-ops' own stack from deploy/cloudformation (its role, events queue
and rules, and in the promotion target the audit bucket), deployed through CloudFormation as in
production.
"""

from __future__ import annotations

import json
from pathlib import Path

from platform_ops.sandbox.accounts import JOB_DEFINITION, account_client
from platform_ops.sandbox.flows import datastore_bucket, deploy
from platform_ops.settings import EnvironmentSettings, Settings

INSTANCE_TYPES = ["m5.large", "m5.xlarge", "m5.2xlarge"]
STACK_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "cloudformation" / "platform-ops-account.yaml"
STACK_NAME = "platform-ops"
SANDBOX_PRINCIPAL = "arn:aws:iam::{account}:user/sandbox"  # who the base (staging) credentials are
# Metaflow's roles in every account (metaflow_config.py names them in Metaflow's profile): its Batch
# tasks', its state machines', EventBridge's to start a @schedule'd one; and the one a deployer assumes
METAFLOW_ROLES = {"batch": "mf-batch", "sfn": "mf-sfn", "events": "mf-events"}
DEPLOYER_ROLE = "metaflow-deployer"


def compute_environment_name(env: EnvironmentSettings) -> str:
    return f"{env.name}-ondemand"


def create_environment(endpoint: str, env: EnvironmentSettings) -> None:
    iam = account_client(endpoint, "iam", env.account_id, env.region)
    ec2 = account_client(endpoint, "ec2", env.account_id, env.region)
    batch = account_client(endpoint, "batch", env.account_id, env.region)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "batch.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    service_role = iam.create_role(RoleName="AWSBatchServiceRole", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument=trust)
    profile = iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]["Arn"]
    iam.create_role(RoleName="metaflow-batch", AssumeRolePolicyDocument=trust)
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]][:1]
    ce = batch.create_compute_environment(
        computeEnvironmentName=compute_environment_name(env), type="MANAGED", state="ENABLED",
        serviceRole=service_role,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 256, "desiredvCpus": 0,
                          "instanceTypes": INSTANCE_TYPES, "subnets": subnets, "securityGroupIds": groups,
                          "instanceRole": profile},
    )["computeEnvironmentArn"]
    for priority, queue in enumerate(env.job_queues, start=1):
        batch.create_job_queue(jobQueueName=queue, state="ENABLED", priority=priority,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])
    batch.register_job_definition(
        jobDefinitionName=JOB_DEFINITION, type="container",
        containerProperties={
            "image": "python:3.11", "command": ["bash", "-c", "echo metaflow task"],
            "jobRoleArn": f"arn:aws:iam::{env.account_id}:role/metaflow-batch",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "4096"}],
        },
        propagateTags=True,
    )


def create_metaflow_roles(endpoint: str, env: EnvironmentSettings, settings: Settings) -> None:
    """METAFLOW_ROLES, and DEPLOYER_ROLE, which the base keys assume to reach this account:
    `step-functions create` passes ARNs of roles that exist, as on AWS."""
    home = next(e for e in settings.environments.values() if not e.role_arn)
    iam = account_client(endpoint, "iam", env.account_id, env.region)
    services = {"batch": "ecs-tasks.amazonaws.com", "sfn": "states.amazonaws.com", "events": "events.amazonaws.com"}
    for key, role in METAFLOW_ROLES.items():
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": services[key]}, "Action": "sts:AssumeRole"}]}))
    iam.create_role(RoleName=DEPLOYER_ROLE, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": SANDBOX_PRINCIPAL.format(account=home.account_id)},
         "Action": "sts:AssumeRole"}]}))


def stack_parameters(env: EnvironmentSettings, settings: Settings) -> dict[str, str]:
    """deploy/cloudformation's parameters for one account, from the settings."""
    home = next(e for e in settings.environments.values() if not e.role_arn)
    target = settings.promotion is not None and env.name == settings.promotion.target
    return {
        "PlatformOpsPrincipalArn": SANDBOX_PRINCIPAL.format(account=home.account_id),
        "ExternalId": env.role_external_id or "sandbox-external-id",
        "JobQueuePrefix": "ml-",
        "MetaflowDatastoreBucket": datastore_bucket(env),
        "MetaflowStepFunctionsRoleArn": f"arn:aws:iam::{env.account_id}:role/mf-sfn" if target else "",
        "AuditBucketName": settings.promotion.audit_bucket if target else "",
        "AuditPrefix": settings.promotion.audit_prefix if settings.promotion else "promotions",
    }


def stack_template() -> str:
    """The stack's template, read from the checkout: deploy/ is the repository's, not the package's
    (an installed platform-ops runs the product; the sandbox runs from a checkout)."""
    if not STACK_TEMPLATE.is_file():
        raise RuntimeError(f"the sandbox runs from a checkout of platform-ops (pip install -e .): it deploys "
                           f"deploy/cloudformation/{STACK_TEMPLATE.name}, not found at {STACK_TEMPLATE}")
    return STACK_TEMPLATE.read_text()


def deploy_stack(endpoint: str, env: EnvironmentSettings, settings: Settings) -> dict[str, str]:
    """platform-ops' CloudFormation stack in one account; its outputs."""
    cfn = account_client(endpoint, "cloudformation", env.account_id, env.region)
    cfn.create_stack(StackName=STACK_NAME, TemplateBody=stack_template(),
                     Capabilities=["CAPABILITY_NAMED_IAM"], Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                 for k, v in stack_parameters(env, settings).items()])
    [stack] = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(f"stack {STACK_NAME} in {env.name}: {stack['StackStatus']} {stack.get('StackStatusReason')}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    if "AuditBucket" in outputs:  # moto's CloudFormation ignores VersioningConfiguration
        account_client(endpoint, "s3", env.account_id, env.region).put_bucket_versioning(
            Bucket=outputs["AuditBucket"], VersioningConfiguration={"Status": "Enabled"})
    return outputs


def create_world(endpoint: str, settings: Settings) -> None:
    for env in settings.environments.values():
        create_environment(endpoint, env)
        create_metaflow_roles(endpoint, env, settings)
        account_client(endpoint, "s3", env.account_id, env.region).create_bucket(Bucket=datastore_bucket(env))
        deploy_stack(endpoint, env, settings)
        deploy(endpoint, env)


def _cluster(endpoint: str, env: EnvironmentSettings) -> str:
    batch = account_client(endpoint, "batch", env.account_id, env.region)
    [ce] = batch.describe_compute_environments(
        computeEnvironments=[compute_environment_name(env)])["computeEnvironments"]
    return ce["ecsClusterArn"]


def register_instances(endpoint: str, env: EnvironmentSettings, count: int) -> int:
    """Scale the compute environment up: EC2 instances join its ECS cluster."""
    ec2 = account_client(endpoint, "ec2", env.account_id, env.region)
    ecs = account_client(endpoint, "ecs", env.account_id, env.region)
    cluster = _cluster(endpoint, env)
    for instance in ec2.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count,
                                      InstanceType="m5.xlarge")["Instances"]:
        ecs.register_container_instance(
            cluster=cluster, instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}))
    return count


def deregister_instances(endpoint: str, env: EnvironmentSettings, count: int) -> int:
    """Scale it down: the oldest instances leave the cluster."""
    ecs = account_client(endpoint, "ecs", env.account_id, env.region)
    cluster = _cluster(endpoint, env)
    arns = ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]
    for arn in arns[:count]:
        ecs.deregister_container_instance(cluster=cluster, containerInstance=arn, force=True)
    return min(count, len(arns))
