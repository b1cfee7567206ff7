"""Metaflow's configuration for the sandbox: what a platform engineer sets to deploy their own flow
with `python flow.py step-functions create`, derived from the sandbox's settings and endpoint so
it names exactly the resources world.py creates (datastore bucket, job queue, roles, DynamoDB table).

Metaflow reads `$METAFLOW_HOME/config_$METAFLOW_PROFILE.json` (metaflow_config_funcs.init_config;
METAFLOW_HOME defaults to ~/.metaflowconfig, an unknown profile is an error, not a silent default),
so a profile per environment keeps the sandbox out of a newcomer's real Metaflow config.

Reaching an account through the environment only (Metaflow's AWS clients are plain boto3, they
send no x-moto-account-id header): moto picks the account of a request from, in order, the server
process's MOTO_ACCOUNT_ID (one account for everything: useless here), the x-moto-account-id header,
then the access key: a key moto issued (an IAM user's, or sts:AssumeRole's temporary key, which
belongs to the account in the role's ARN) maps to its account, and any other key to the default
account, which the sandbox sets to the home (staging) account. So staging is the base keys
(`sandbox`), and another account is boto3 assuming a role there from an AWS config profile
(`role_arn` + `source_profile`), as production is reached in real life. boto3 takes keys in the
environment before any profile, so targeting that account means unsetting AWS_ACCESS_KEY_ID.
(moto 5.2.5: core/responses.py get_current_account, sts/models.py _create_access_key; boto3 1.44
sends the AssumeRole to AWS_ENDPOINT_URL like every other call: measured by test_metaflow_config.)
A sandbox reset forgets the temporary keys: a process that outlives one must assume the role again;
each `python flow.py ...` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from platform_ops.sandbox.accounts import SANDBOX_CREDENTIALS
from platform_ops.sandbox.flows import DYNAMO_TABLE, datastore_bucket
from platform_ops.sandbox.world import DEPLOYER_ROLE, METAFLOW_ROLES  # the roles world.py creates
from platform_ops.settings import EnvironmentSettings, Settings

PROFILE = "sandbox"  # METAFLOW_PROFILE of the home (staging) account; others are sandbox_<environment>
AWS_CONFIG = "aws_config"  # beside the profiles: boto3's profiles for the accounts reached by a role
SOURCE_PROFILE = "sandbox"  # the AWS profile holding the base keys the role is assumed with


def home(settings: Settings) -> EnvironmentSettings:
    """The environment the base keys reach (the one without a role), as Sandbox.home."""
    envs = list(settings.environments.values())
    return next((e for e in envs if not e.role_arn), envs[0])


def profile_name(settings: Settings, environment: str | None = None) -> str:
    env = settings.environments[environment] if environment else home(settings)
    return PROFILE if env.name == home(settings).name else f"{PROFILE}_{env.name}"


def role_arn(env: EnvironmentSettings, role: str) -> str:
    return f"arn:aws:iam::{env.account_id}:role/{role}"


def metaflow_profile(settings: Settings, endpoint: str, environment: str | None = None) -> dict[str, str]:
    """config_<profile>.json for one environment: S3 datastore in its bucket (through the sandbox's
    S3), its first job queue, its roles and the DynamoDB table a foreach needs. Only the
    account's resources differ between environments, never the shape."""
    env = settings.environments[environment] if environment else home(settings)
    if not env.job_queues:
        raise ValueError(f"environment {env.name!r} has no job queue for Metaflow's Batch tasks")
    return {
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{datastore_bucket(env)}/metaflow",
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_BATCH_JOB_QUEUE": env.job_queues[0],
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": role_arn(env, METAFLOW_ROLES["batch"]),
        "METAFLOW_SFN_IAM_ROLE": role_arn(env, METAFLOW_ROLES["sfn"]),
        "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": role_arn(env, METAFLOW_ROLES["events"]),
        "METAFLOW_SFN_DYNAMO_DB_TABLE": DYNAMO_TABLE,
        "METAFLOW_BATCH_EMIT_TAGS": "true",  # the tags platform-ops reads owners from, as the fixtures have
    }


def aws_config(settings: Settings) -> str:
    """boto3's config file: the base keys, and per other account a profile assuming its deployer role."""
    lines = [f"[profile {SOURCE_PROFILE}]",
             f"aws_access_key_id = {SANDBOX_CREDENTIALS['aws_access_key_id']}",
             f"aws_secret_access_key = {SANDBOX_CREDENTIALS['aws_secret_access_key']}", ""]
    for env in settings.environments.values():
        if env.name != home(settings).name:
            lines += [f"[profile {profile_name(settings, env.name)}]",
                      f"role_arn = {role_arn(env, DEPLOYER_ROLE)}",
                      f"source_profile = {SOURCE_PROFILE}", f"region = {env.region}", ""]
    return "\n".join(lines)


def aws_env(settings: Settings, endpoint: str, directory: Path, environment: str | None = None) -> dict[str, str]:
    """The AWS environment that puts Metaflow's boto3 in one account (see the module docstring)."""
    env = settings.environments[environment] if environment else home(settings)
    base = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": env.region}
    if env.name == home(settings).name:
        return {**base, "AWS_ACCESS_KEY_ID": SANDBOX_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": SANDBOX_CREDENTIALS["aws_secret_access_key"]}
    return {**base, "AWS_CONFIG_FILE": str(directory / AWS_CONFIG), "AWS_PROFILE": profile_name(settings, env.name)}


def metaflow_env(settings: Settings, endpoint: str, directory: Path, environment: str | None = None) -> dict[str, str]:
    """Everything a `python flow.py ...` subprocess needs besides PATH and HOME."""
    return {"METAFLOW_HOME": str(directory), "METAFLOW_PROFILE": profile_name(settings, environment),
            **aws_env(settings, endpoint, directory, environment)}


def write_profiles(settings: Settings, endpoint: str, directory: Path) -> dict[str, Path]:
    """Write every environment's config_<profile>.json and the AWS config; the profile files by
    environment name. Rewritten at each start: the endpoint's port may differ."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for env in settings.environments.values():
        if not env.job_queues:
            continue
        path = directory / f"config_{profile_name(settings, env.name)}.json"
        path.write_text(json.dumps(metaflow_profile(settings, endpoint, env.name), indent=2) + "\n")
        written[env.name] = path
    (directory / AWS_CONFIG).write_text(aws_config(settings))
    return written


def instructions(settings: Settings, endpoint: str, directory: Path) -> list[str]:
    """What `serve` and `demo` print: three lines to paste for staging, then production's."""
    staging = metaflow_env(settings, endpoint, directory)
    lines = [f"export METAFLOW_HOME={staging.pop('METAFLOW_HOME')}",
             f"export METAFLOW_PROFILE={staging.pop('METAFLOW_PROFILE')}",
             "export " + " ".join(f"{k}={v}" for k, v in staging.items())]
    for env in settings.environments.values():
        if env.name == home(settings).name or not env.job_queues:
            continue
        other = metaflow_env(settings, endpoint, directory, env.name)
        other.pop("METAFLOW_HOME")
        lines.append(f"# {env.name} ({env.account_id}): unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; export "
                     + " ".join(f"{k}={v}" for k, v in other.items())
                     + f"; then python flow.py{' --production' if env.name == 'production' else ''} "
                       "step-functions create")
    return lines


def announce(settings: Settings, endpoint: str, directory: Path) -> None:
    """`serve`/`demo`'s part: write the profiles, then print what to paste to deploy a flow."""
    write_profiles(settings, endpoint, directory)
    print(f"[sandbox] deploy your own Metaflow flow (profiles in {directory}): paste, then "
          "`python flow.py step-functions create`", flush=True)
    for line in instructions(settings, endpoint, directory):
        print(f"  {line}", flush=True)
