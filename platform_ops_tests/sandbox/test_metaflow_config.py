"""A platform engineer's own flow deploys into the sandbox with Metaflow's own CLI and nothing but
the environment `serve` prints: the state machine lands in the account the profile says, under
Metaflow's naming, `trigger` starts an execution, and a @schedule'd flow gets its EventBridge rule.
(Tasks do not run yet: the sandbox's Batch does not execute Metaflow's task commands.)"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from platform_ops.sandbox import metaflow_config
from platform_ops.sandbox.accounts import account_client

CLI_TIMEOUT = 600  # s per Metaflow command: seconds normally; a deadline for a busy machine, not an expectation

LINEAR = """
from metaflow import FlowSpec, step{imports}

{decorator}
class {name}(FlowSpec):
    @step
    def start(self):
        self.x = 1
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    {name}()
"""


def parse_exports(lines):
    """The variables the printed lines set, as a shell would after pasting them: `export K=V ...`
    lines for staging; each '# env (...): unset ...; export ...; ...' line by its environment."""
    staging, others = {}, {}
    for line in lines:
        if line.startswith("export "):
            staging.update(kv.split("=", 1) for kv in line.removeprefix("export ").split())
        elif line.startswith("# "):
            name = line[2:].split(" ", 1)[0]
            [export] = [part for part in line.split("; ") if part.startswith("export ")]
            others[name] = dict(kv.split("=", 1) for kv in export.removeprefix("export ").split())
    return staging, others


@pytest.fixture
def printed(world, tmp_path):
    """The environments a newcomer gets by pasting what `serve` prints (profiles written first)."""
    directory = tmp_path / "metaflow-home"
    metaflow_config.write_profiles(world.settings, world.sandbox.endpoint, directory)
    staging, others = parse_exports(metaflow_config.instructions(world.settings, world.sandbox.endpoint, directory))
    return {"staging": staging, "production": {**staging, **others["production"]}
            | {k: None for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}  # the line's `unset`


def metaflow(tmp_path, env, flow_file, *args):
    """`python flow.py --no-pylint ARGS` with only that environment, PATH, HOME (an empty one: no
    ~/.metaflowconfig or ~/.aws of the machine's) and USER (Metaflow refuses an unknown user)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "USER": "alice"}
    child = {**base, **{k: v for k, v in env.items() if v is not None}}
    proc = subprocess.run([sys.executable, str(flow_file), "--no-pylint", *args], cwd=tmp_path, env=child,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def write_flow(tmp_path, name, decorator="", imports=""):
    path = tmp_path / f"{name.lower()}.py"
    path.write_text(textwrap.dedent(LINEAR.format(name=name, decorator=decorator, imports=imports)))
    return path


def state_machines(world, environment):
    env = world.settings.environments[environment]
    sfn = account_client(world.sandbox.endpoint, "stepfunctions", env.account_id, env.region)
    return {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}


def executions(world, environment, arn):
    env = world.settings.environments[environment]
    sfn = account_client(world.sandbox.endpoint, "stepfunctions", env.account_id, env.region)
    return sfn.list_executions(stateMachineArn=arn)["executions"]


def test_the_profile_names_resources_the_sandbox_has(world):
    for name, env in world.settings.environments.items():
        profile = metaflow_config.metaflow_profile(world.settings, world.sandbox.endpoint, name)
        def client(service, env=env):
            return account_client(world.sandbox.endpoint, service, env.account_id, env.region)

        bucket = profile["METAFLOW_DATASTORE_SYSROOT_S3"].removeprefix("s3://").split("/")[0]
        client("s3").head_bucket(Bucket=bucket)
        [queue] = client("batch").describe_job_queues(jobQueues=[profile["METAFLOW_BATCH_JOB_QUEUE"]])["jobQueues"]
        assert queue["state"] == "ENABLED"
        for key in ("METAFLOW_ECS_S3_ACCESS_IAM_ROLE", "METAFLOW_SFN_IAM_ROLE", "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE"):
            assert client("iam").get_role(RoleName=profile[key].split("/")[-1])["Role"]["Arn"] == profile[key]
            assert f":{env.account_id}:" in profile[key], f"{name}'s {key} is in another account"
        assert profile["METAFLOW_SFN_DYNAMO_DB_TABLE"] in client("dynamodb").list_tables()["TableNames"]


def test_profiles_and_printed_lines(world, tmp_path):
    written = metaflow_config.write_profiles(world.settings, world.sandbox.endpoint, tmp_path)
    assert {p.name for p in written.values()} == {"config_sandbox.json", "config_sandbox_production.json"}
    lines = metaflow_config.instructions(world.settings, world.sandbox.endpoint, tmp_path)
    assert lines[:2] == [f"export METAFLOW_HOME={tmp_path}", "export METAFLOW_PROFILE=sandbox"]
    assert f"AWS_ENDPOINT_URL={world.sandbox.endpoint}" in lines[2]
    assert "METAFLOW_PROFILE=sandbox_production" in lines[3] and "--production" in lines[3]


def test_a_linear_flow_deploys_and_triggers_in_staging(world, printed, tmp_path):
    flow = write_flow(tmp_path, "LinearFlow")
    metaflow(tmp_path, printed["staging"], flow, "step-functions", "create")
    machines = state_machines(world, "staging")
    assert "LinearFlow" in machines, machines  # no @project: the flow's own name
    assert "LinearFlow" not in state_machines(world, "production")
    metaflow(tmp_path, printed["staging"], flow, "step-functions", "trigger")
    assert len(executions(world, "staging", machines["LinearFlow"])) == 1


def test_a_project_branch_deploys_under_metaflows_name(world, printed, tmp_path):
    flow = write_flow(tmp_path, "BranchFlow", '@project(name="sbx")', ", project")
    metaflow(tmp_path, printed["staging"], flow, "--branch", "x", "step-functions", "create")
    assert "sbx.test.x.BranchFlow" in state_machines(world, "staging")
    metaflow(tmp_path, printed["staging"], flow, "--branch", "x", "step-functions", "trigger")
    assert executions(world, "staging", state_machines(world, "staging")["sbx.test.x.BranchFlow"])


def test_production_is_the_other_account(world, printed, tmp_path):
    flow = write_flow(tmp_path, "ProdFlow", '@project(name="sbx")', ", project")
    metaflow(tmp_path, printed["production"], flow, "--production", "step-functions", "create")
    machines = state_machines(world, "production")
    assert "sbx.prod.ProdFlow" in machines and "sbx.prod.ProdFlow" not in state_machines(world, "staging")
    env = world.settings.environments["production"]
    assert machines["sbx.prod.ProdFlow"].split(":")[4] == env.account_id
    metaflow(tmp_path, printed["production"], flow, "--production", "step-functions", "trigger")
    assert executions(world, "production", machines["sbx.prod.ProdFlow"])


def test_a_scheduled_flow_gets_its_eventbridge_rule(world, printed, tmp_path):
    flow = write_flow(tmp_path, "HourlyFlow", "@schedule(hourly=True)", ", schedule")
    metaflow(tmp_path, printed["staging"], flow, "step-functions", "create")
    env = world.settings.environments["staging"]
    events = account_client(world.sandbox.endpoint, "events", env.account_id, env.region)
    rules = {r["Name"]: r for r in events.list_rules()["Rules"]}
    assert rules["HourlyFlow"]["ScheduleExpression"] == "cron(0 * * * ? *)"
    [target] = events.list_targets_by_rule(Rule="HourlyFlow")["Targets"]
    assert target["Arn"] == state_machines(world, "staging")["HourlyFlow"]
    assert target["RoleArn"] == metaflow_config.metaflow_profile(world.settings, world.sandbox.endpoint)[
        "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE"]


FOREACH = """
from metaflow import FlowSpec, step


class FanFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.train, foreach="items")

    @step
    def train(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FanFlow()
"""


def test_a_foreach_deploys_with_the_profiles_dynamodb_table(world, printed, tmp_path):
    """Metaflow refuses a foreach without METAFLOW_SFN_DYNAMO_DB_TABLE; the definition names the
    profile's table, which the sandbox has."""
    flow = tmp_path / "fanflow.py"
    flow.write_text(FOREACH)
    metaflow(tmp_path, printed["staging"], flow, "step-functions", "create")
    env = world.settings.environments["staging"]
    sfn = account_client(world.sandbox.endpoint, "stepfunctions", env.account_id, env.region)
    definition = sfn.describe_state_machine(stateMachineArn=state_machines(world, "staging")["FanFlow"])["definition"]
    assert '"Map"' in definition  # the foreach
    table = metaflow_config.metaflow_profile(world.settings, world.sandbox.endpoint)["METAFLOW_SFN_DYNAMO_DB_TABLE"]
    assert table in definition


@pytest.mark.skipif(not shutil.which("micromamba"), reason=(
    "@pypi/@conda: `step-functions create` resolves the environment at deploy time with micromamba, "
    "which Metaflow downloads from micro.mamba.pm into $METAFLOW_HOME/micromamba unless one is on PATH, "
    "then fetches the packages from PyPI/conda-forge: the sandbox stands in for AWS, not for those "
    "(measured: without network the download fails, 'bzip2: Compressed file ends unexpectedly')"))
def test_a_pypi_flow_deploys_when_micromamba_and_pypi_are_reachable(world, printed, tmp_path):
    flow = write_flow(tmp_path, "PyFlow", '@pypi_base(packages={"six": "1.16.0"})', ", pypi_base")
    metaflow(tmp_path, printed["staging"], flow, "--environment=pypi", "step-functions", "create")
    assert "PyFlow" in state_machines(world, "staging")
