"""Promotion wiring: jobs `promotion_checks`, `promote_flow` and `rollback_flow` (one op each,
named after its job, so a launch from CI sets `ops.<job>.config`), the external asset
`promotion_audit_log` (one materialization per audit record, one partition per production state
machine) and the asset `promotion_history` (every record, as a table for auditors).

A promotion or rollback runs only with the tag `platform_ops/promotion=<production state
machine>`: dagster.yaml limits that tag to one run per value, so a second launch for the same
flow waits in the queue instead of racing the first. The jobs are partitioned by production
state machine (the audit log's partitions): launching a partition from the Launchpad fills in
flow and project and sets that tag; CI launches without a partition, with the tag.

Every audited attempt that changed production or tried to (not a no-op) is announced in Slack
once, after its record is stored (the record is never held back by Slack).

Each function here reads (adapters), asks core for the plan, performs it (adapters) and records
what core says; the decisions themselves are in promotion/core.py.
"""


import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from platform_ops import exactly_once
from platform_ops.adapters import s3, stepfunctions
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.adapters.ledger import Ledger
from platform_ops.adapters.slack import SlackError, next_step, post_once
from platform_ops.metadata import table as metadata_table
from platform_ops.naming import NamingError
from platform_ops.promotion import core
from platform_ops.promotion.core import DeployAction, Kind, Step
from platform_ops.promotion.lint import lint_package, package_sha
from platform_ops.redaction import redact_data
from platform_ops.resources import aws_for, aws_resource_key, dagster_run_url
from platform_ops.settings import EnvironmentSettings, PromotionSettings, Settings
from platform_ops.vocabulary import ANNOUNCED_TAG

GROUP = "promotion"
PROMOTION_TAG = "platform_ops/promotion"
PARTITION_TAG = "dagster/partition"
LEDGER_NAMESPACE = "promotion"
PROMOTED = dg.DynamicPartitionsDefinition(name="promoted_state_machines")
AUDIT_LOG = dg.AssetKey("promotion_audit_log")
CHECK_COLUMNS = ["name", "passed", "detail"]
STEP_COLUMNS = ["name", "passed", "changed", "detail"]
HISTORY_COLUMNS = ["promotion_id", "kind", "outcome", "production_changed", "flow", "project", "branch",
                   "requested_by", "reason", "dagster_user", "started_at", "finished_at", "to_version_arn",
                   "execution_arn", "dagster_run_id"]


class ChecksConfig(dg.Config):
    """Which staging deployment to check (state machine `{project}.test.{branch}.{flow}`)."""

    flow: str = Field(description="Metaflow flow class name, e.g. DemoFlow")
    project: str = Field(description="@project name, e.g. mlplatform")
    branch: str = Field(description="the staging branch (`--branch`), e.g. feature_x")
    staging_state_machine: str | None = Field(default=None, description="overrides the name derived from the above")
    requested_by: str = Field(default="", description="who asks")
    reason: str = Field(default="", description="why")

    def request(self, trigger: bool = False) -> core.PromotionRequest:
        return core.PromotionRequest(self.flow, self.project, self.branch, self.requested_by, self.reason, trigger,
                                     self.staging_state_machine)


class PromotionConfig(ChecksConfig):
    requested_by: str = Field(description="who asks (recorded in the audit trail)")
    reason: str = Field(description="why (recorded in the audit trail)")
    trigger: bool = Field(default=True, description="start a production run after deploying")


class RollbackConfig(dg.Config):
    flow: str = Field(description="Metaflow flow class name, e.g. DemoFlow")
    project: str = Field(description="@project name, e.g. mlplatform")
    requested_by: str = Field(description="who asks (recorded in the audit trail)")
    reason: str = Field(description="why (recorded in the audit trail)")
    to_version: str | None = Field(default=None, description="a version number or ARN; default: the one "
                                                             "published before the current one")

    def request(self) -> core.PromotionRequest:
        return core.PromotionRequest(self.flow, self.project, None, self.requested_by, self.reason)


@dataclass(frozen=True)
class Wiring:
    """What the promotion ops and assets take from the settings, read once per code location."""

    p: PromotionSettings
    source: EnvironmentSettings
    target: EnvironmentSettings
    mapping: core.IdentifierMap
    rules: tuple[core.Rule, ...]
    settings: Settings

    @classmethod
    def of(cls, settings: Settings) -> "Wiring | None":
        p = settings.promotion
        if p is None:
            return None
        source, target = settings.environments[p.source], settings.environments[p.target]
        mapping = core.IdentifierMap(accounts={source.account_id: target.account_id}, queues=p.queues,
                                     roles=p.roles, buckets=p.buckets, staging_queues=source.job_queues)
        rules = core.DEFAULT_RULES + tuple(core.forbid_rule(r.name, r.description, r.forbid) for r in p.rules)
        return cls(p, source, target, mapping, rules, settings)

    @property
    def resource_keys(self) -> set[str]:
        return {aws_resource_key(self.p.source), aws_resource_key(self.p.target)}

    @property
    def announcing_keys(self) -> set[str]:
        """promote_flow and rollback_flow announce their attempts in Slack."""
        return self.resource_keys | {"slack"}

    def source_arn(self, request: core.PromotionRequest) -> str:
        return stepfunctions.state_machine_arn(self.source.account_id, self.source.region, request.source_name)

    def target_arn(self, request: core.PromotionRequest) -> str:
        return stepfunctions.state_machine_arn(self.target.account_id, self.target.region, request.target_name)


@dataclass
class Run:
    """One op's attempt: the wiring, the Dagster context (resources, tags, logs) and the step in
    progress, which whatever fails there is recorded against."""

    w: Wiring
    context: Any
    step: Step = Step.RESOLVE

    def aws(self, env: EnvironmentSettings) -> AwsEnvironmentResource:
        return aws_for(self.context, env.name)

    def client(self, env: EnvironmentSettings, service: str) -> Any:
        return self.aws(env).client(service)


@dataclass(frozen=True)
class Resolved:
    """The staging deployment asked for, as Step Functions describes it."""

    arn: str
    described: dict
    deployment: core.Deployment


def _now() -> datetime:
    return datetime.now(UTC)


def _bad_config(exc: Exception | str) -> dg.Failure:
    """Bad config is not an attempt: no record, the run fails with what to fix."""
    return dg.Failure(f"bad config: {exc}")


def valid(request: core.PromotionRequest, needs_reason: bool) -> None:
    try:
        core.validate_request(request, needs_reason)
    except (ValueError, NamingError) as exc:
        raise _bad_config(exc) from None


def serialized(context: Any, target_name: str) -> None:
    """The concurrency key must name the state machine this run changes (a launch from a
    partition sets it; CI sets it by hand), and a partition, when there is one, must be that
    state machine too (the config can be edited after the partition was picked)."""
    tag = context.run.tags.get(PROMOTION_TAG)
    if tag != target_name:
        raise dg.Failure(f"launch with the run tag {PROMOTION_TAG}={target_name} (found {tag!r}): dagster.yaml "
                         "allows one run per value, so promotions of one flow never overlap; launching the "
                         f"partition {target_name} sets it")
    partition = context.run.tags.get(PARTITION_TAG)
    if partition is not None and partition != target_name:
        raise dg.Failure(f"launched for partition {partition!r}, but the config asks for {target_name}: pick the "
                         "partition of the flow in the config")


# ---- reading staging: the checks ----

def resolve(run: Run, request: core.PromotionRequest) -> Resolved:
    """The staging deployment asked for; bad config (it is not there, or not Metaflow's) when not."""
    src = run.w.source
    arn = run.w.source_arn(request)
    described = stepfunctions.describe_state_machine(run.client(src, "stepfunctions"), arn)
    if described is None:
        raise _bad_config(f"no staging deployment {request.source_name} in {src.name} ({src.account_id}); deploy "
                          f"it with `python flow.py --branch {request.branch} step-functions create`, or name it "
                          "with staging_state_machine")
    try:
        return Resolved(arn, described, core.deployment_of(described["definition"]))
    except ValueError as exc:
        raise _bad_config(f"{request.source_name}: {exc}") from None


def lint(run: Run, deployment: core.Deployment) -> tuple[bytes | None, core.CheckResult]:
    """The code package and its lint check: linted only when it is the package deployed."""
    package, error = None, None
    try:
        package = s3.read_url(run.client(run.w.source, "s3"), deployment.code_url)
    except (AwsError, ValueError) as exc:
        error = str(exc)
    refused = core.package_check(deployment, error, package_sha(package) if package is not None else None)
    if refused is not None:
        return package, refused
    return package, lint_package(package, deployment.script, run.w.p.lint_timeout_seconds, run.w.p.lint_isolation)


def latest_run(run: Run, resolved: Resolved) -> tuple[core.CheckResult, str | None]:
    """The latest staging run check, and that run's ARN."""
    max_age = run.w.p.max_staging_age_hours
    sfn = run.client(run.w.source, "stepfunctions")
    now = _now()
    executions = list(stepfunctions.recent_executions(sfn, resolved.arn, now - timedelta(hours=max_age)))
    check = core.check_latest_run(
        executions, now, max_age, core.digest(resolved.described["definition"]),
        lambda e: core.digest(stepfunctions.definition_for_execution(sfn, e.arn)))
    latest = core.latest_finished(executions)
    return check, latest.arn if latest else None


def gather(run: Run, request: core.PromotionRequest, resolved: Resolved,
           checks: list[core.CheckResult]) -> core.Staging:
    """Every check into `checks`, each reported even after another failed. Read-only; an AWS
    read that fails raises, with `run.step` naming it and the checks so far kept."""
    package, lint_check = lint(run, resolved.deployment)
    checks += [lint_check, core.check_names(request, resolved.deployment)]
    run.step = Step.READ_STAGING_RUNS
    latest_check, latest_arn = latest_run(run, resolved)
    checks.append(latest_check)
    run.step = Step.READ_PRODUCTION
    production = stepfunctions.describe_state_machine(run.client(run.w.target, "stepfunctions"),
                                                      run.w.target_arn(request))
    production_definition = production["definition"] if production else None
    definition = resolved.described["definition"]
    translated = core.translate(definition, project=request.project, flow=request.flow, branch=request.branch,
                                mapping=run.w.mapping,
                                production_token=core.production_token_of(production_definition))
    checks += core.check_definition(translated, run.w.mapping, run.w.rules)
    return core.Staging(resolved.arn, definition, resolved.described["roleArn"], resolved.deployment, package,
                        translated, latest_arn, production_definition)


# ---- the audit record of every attempt ----

def new_record(run: Run, kind: Kind, request: core.PromotionRequest) -> core.AuditRecord:
    target = {"environment": run.w.target.name, "account_id": run.w.target.account_id,
              "state_machine_arn": run.w.target_arn(request)}
    return core.new_record(kind, request, run_id=run.context.run_id, started=_now(),
                           dagster_user=run.context.run.tags.get("dagster/user"), target=target,
                           lint_isolation=run.w.p.lint_isolation)


def attempt(run: Run, record: core.AuditRecord, steps: Callable[[], None]) -> None:
    """Run an attempt's steps; whatever fails is recorded against the step in progress, so the
    record always gets written. Bad config (dg.Failure) is not an attempt and propagates."""
    try:
        steps()
    except dg.Failure:
        raise
    except Exception as exc:  # AWS, or a bug: either way the attempt is recorded
        if not isinstance(exc, AwsError):
            run.context.log.error(f"{record.kind} step {str(run.step)!r} raised:\n" + traceback.format_exc())
        detail = str(exc) if isinstance(exc, AwsError) else f"{type(exc).__name__}: {exc}"
        record.steps.append(core.StepResult(run.step, False, detail))


def store(run: Run, data: dict, key: str) -> None:
    """Write the record once (never overwritten); when that fails it is logged whole (redacted)
    and the run fails, so no attempt goes unrecorded."""
    p = run.w.p
    try:
        s3.put_new_json(run.client(run.w.target, "s3"), p.audit_bucket, key, data)
    except AwsError as exc:
        run.context.log.error("audit record not stored; here it is: " + json.dumps(redact_data(data), sort_keys=True))
        raise dg.Failure(f"{data['kind']} {data['outcome']}, but its audit record was not stored at "
                         f"s3://{p.audit_bucket}/{key}: {exc}. The record is in this run's logs.") from exc


def record_metadata(data: dict, url: str, calls: Any) -> dict[str, Any]:
    return {
        "outcome": data["outcome"], "production_changed": data["production_changed"],
        "promotion_id": data["promotion_id"], "requested_by": data["requested_by"],
        "reason": data["reason"], "record": dg.MetadataValue.path(url),
        "checks": metadata_table(data["checks"], CHECK_COLUMNS),
        "steps": metadata_table(data["steps"], STEP_COLUMNS),
        "version_arn": data["target"].get("version_arn") or "", "execution_arn": data["execution_arn"] or "",
        "aws_calls": dg.MetadataValue.json(dict(calls)),
    }


def finish(run: Run, record: core.AuditRecord, calls: Any) -> dg.Output:
    """Decide the outcome, store the record, announce it, show it in the UI; a failing attempt
    fails the run after its record is safe, and so does an announcement Slack refused."""
    core.conclude(record, _now().isoformat())
    data = record.to_dict()
    key = core.record_key(run.w.p.audit_prefix, record.flow, record.promotion_id)
    store(run, data, key)
    metadata = record_metadata(data, f"s3://{run.w.p.audit_bucket}/{key}", calls)
    announced, slack_error = announce(run, data, key)
    metadata["announcement"] = announced
    if slack_error is None:  # said in Slack: the run-failure sensor need not say it again
        run.context.instance.add_run_tags(run.context.run_id, {ANNOUNCED_TAG: "true"})
    target = core.tail(record.target.get("state_machine_arn", ""))
    run.context.instance.add_dynamic_partitions(PROMOTED.name, [target])
    run.context.log_event(dg.AssetMaterialization(AUDIT_LOG, partition=target, metadata=metadata,
                                                  description=f"{data['kind']} of {target}: {data['outcome']}"))
    if record.outcome in core.FAILING or slack_error:
        summary = core.failure_summary(record) if record.outcome in core.FAILING else \
            f"{record.kind} {record.outcome}"
        if slack_error:
            summary += (f" | audited at s3://{run.w.p.audit_bucket}/{key}, but its Slack announcement failed: "
                        f"{slack_error}; re-executing this run sends it first")
        raise dg.Failure(summary, metadata=metadata)
    return dg.Output(data, metadata=metadata)


# ---- what on-call sees: the announcement, exactly once ----

def _ledger(run: Run) -> Ledger:
    return Ledger(run.context.instance, namespace=LEDGER_NAMESPACE)


def _root_run_id(run: Run) -> str:
    return run.context.dagster_run.root_run_id or run.context.run_id


def announce(run: Run, data: dict, key: str) -> tuple[str, str | None]:
    """Post the attempt's announcement once (post_once, keyed by the promotion id), after its
    record is stored. Never raises: (what happened, for the metadata; Slack's error or None).
    The run's lineage remembers the attempt, so a re-execution sends what Slack refused."""
    run_id = data.get("dagster_run_id") or run.context.run_id  # the attempt's run, also when a re-execution sends it
    try:
        links = core.announcement_links(dagster_run_url(run.w.settings, run_id), run.w.p.audit_bucket, key,
                                        data["target"].get("state_machine_arn", ""))
        message = core.render_announcement(data, links)
        if message is None:
            return "not announced: a no-op changes nothing", None
        ledger = _ledger(run)
        ledger.put(f"lineage/{_root_run_id(run)}", promotion_id=data["promotion_id"], record_key=key)
        delivery = post_once(run.context.resources.slack, ledger, core.announcement_key(data["promotion_id"]),
                             run.w.settings.slack.channel, message, run_id=run.context.run_id,
                             root_run_id=_root_run_id(run),
                             payload={"kind": "promotion", "promotion_id": data["promotion_id"]})
    except Exception as exc:  # SlackError, or a bug: the record is stored either way and the run says so
        detail = str(exc) if isinstance(exc, SlackError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, SlackError):
            run.context.log.error("announcing raised:\n" + traceback.format_exc())
        run.context.log.error(f"the announcement of {data['promotion_id']} was not posted: {detail}")
        return f"failed: {detail}", detail
    return f"{delivery.how} (ts {delivery.ts})" if delivery.ts else delivery.how, None


def send_pending(run: Run) -> None:
    """A re-execution (or a retried step) first sends the announcement its lineage's earlier
    attempt could not: read back from its audit record, posted once. Slack still refusing
    fails the run before a new attempt is made."""
    ledger = _ledger(run)
    pending = ledger.get(f"lineage/{_root_run_id(run)}")
    if not pending:
        return
    key = core.announcement_key(pending["promotion_id"])
    if next_step(ledger, ledger.get(key), _root_run_id(run)) in (exactly_once.Step.DONE, exactly_once.Step.BUSY):
        return
    try:
        data = json.loads(s3.read_url(run.client(run.w.target, "s3"),
                                      f"s3://{run.w.p.audit_bucket}/{pending['record_key']}"))
    except (AwsError, ValueError) as exc:
        raise dg.Failure(f"the earlier attempt {pending['promotion_id']}'s record could not be read back to "
                         f"announce it: {exc}") from exc
    announced, error = announce(run, data, pending["record_key"])
    run.context.log.info(f"earlier attempt {pending['promotion_id']} ({data['outcome']}): {announced}")
    if error:
        raise dg.Failure(f"the earlier attempt {pending['promotion_id']} ({data['outcome']}) is still not announced:"
                         f" {error}; nothing new was attempted")


# ---- the three ops' bodies ----

def check_only(run: Run, config: ChecksConfig) -> dg.Output:
    """The sanity checks alone, read-only: an AWS read that fails fails the run, naming it."""
    request = config.request()
    valid(request, needs_reason=False)
    checks: list[core.CheckResult] = []
    with count_calls() as calls:
        try:
            resolved = resolve(run, request)
            # CI checks every pull request: the flow's partition is there before its first promotion
            run.context.instance.add_dynamic_partitions(PROMOTED.name, [request.target_name])
            gather(run, request, resolved, checks)
        except AwsError as exc:
            raise dg.Failure(f"{run.step}: {exc}") from exc
    rows = [{"name": str(c.name), "passed": c.passed, "detail": c.detail} for c in checks]
    metadata = {"checks": metadata_table(rows, CHECK_COLUMNS), "aws_calls": dg.MetadataValue.json(dict(calls))}
    failed = core.checks_failed(checks)
    if failed is not None:
        raise dg.Failure(failed, metadata=metadata)
    return dg.Output(rows, metadata=metadata)


def promote(run: Run, config: PromotionConfig) -> dg.Output:
    """Checks, then (only if all passed) productionize, then the audit record, whatever happened."""
    request = config.request(trigger=config.trigger)
    valid(request, needs_reason=True)
    serialized(run.context, request.target_name)
    send_pending(run)
    record = new_record(run, Kind.PROMOTION, request)
    record.source = {"environment": run.w.source.name, "account_id": run.w.source.account_id,
                     "state_machine_arn": run.w.source_arn(request)}

    def steps() -> None:
        staging = gather(run, request, resolve(run, request), record.checks)
        core.record_staging(record, staging)
        if core.may_proceed(record.checks):
            productionize(run, core.plan_promotion(request, staging, run.w.mapping, record.promotion_id),
                          staging.package, record)

    with count_calls() as calls:
        attempt(run, record, steps)
    return finish(run, record, calls)


def productionize(run: Run, plan: core.PromotionPlan, package: bytes | None, record: core.AuditRecord) -> None:
    """Code package, then the state machine (one atomic create-or-update that publishes a
    version), then the trigger; each recorded once done. A step that fails raises: the ones
    before the deploy changed nothing, and a failed trigger leaves the deploy in place."""
    sfn = run.client(run.w.target, "stepfunctions")
    arn = record.target["state_machine_arn"]
    if plan.previous_definition_digest is not None:
        record.target["previous_definition_digest"] = plan.previous_definition_digest
        run.step = Step.READ_PRODUCTION_VERSIONS
        newest = core.newest_version(stepfunctions.versions(sfn, arn))
        record.target["previous_version_arn"] = newest.arn if newest else None
    if plan.action is DeployAction.NOOP:
        record.steps.append(plan.unchanged())
        return
    run.step = Step.CODE_PACKAGE
    written = s3.copy_content_addressed(package, run.client(run.w.target, "s3"), plan.code_url)
    record.steps.append(plan.copied(written))
    run.step = Step.DEPLOY
    record.target["version_arn"] = stepfunctions.publish(
        sfn, arn=arn, name=plan.name, definition=plan.definition, role_arn=plan.role_arn,
        exists=plan.action is DeployAction.UPDATE, description=plan.description)
    record.steps.append(plan.deployed(record.target["version_arn"]))
    if plan.trigger:
        run.step = Step.TRIGGER
        record.execution_arn = stepfunctions.start(sfn, arn, core.TRIGGER_INPUT)
        record.steps.append(plan.triggered(record.execution_arn))


def roll_back(run: Run, config: RollbackConfig) -> dg.Output:
    """Put production back on an earlier published version (by publishing its definition as
    the newest version), audited like a promotion."""
    request = config.request()
    valid(request, needs_reason=True)
    serialized(run.context, request.target_name)
    send_pending(run)
    record = new_record(run, Kind.ROLLBACK, request)
    run.step = Step.READ_PRODUCTION
    with count_calls() as calls:
        attempt(run, record, lambda: restore(run, config.to_version, record))
    return finish(run, record, calls)


def restore(run: Run, to_version: str | None, record: core.AuditRecord) -> None:
    """Find the version to put back and publish its definition as the newest version; a
    missing deployment or version asked for is bad config."""
    sfn = run.client(run.w.target, "stepfunctions")
    arn = record.target["state_machine_arn"]
    name = core.tail(arn)
    current = stepfunctions.describe_state_machine(sfn, arn)
    if current is None:
        raise _bad_config(f"no production deployment {name} in {run.w.target.name}")
    record.target["previous_definition_digest"] = core.digest(current["definition"])
    run.step = Step.READ_VERSIONS
    published = stepfunctions.versions(sfn, arn)
    newest = core.newest_version(published)
    try:
        target = core.rollback_target(published, newest.arn if newest else None, to_version)
    except ValueError as exc:
        raise _bad_config(exc) from None
    record.target.update(previous_version_arn=newest.arn if newest else None, restored_version_arn=target.arn)
    record.checks.append(core.restore_check(target))
    run.step = Step.READ_VERSION
    version = stepfunctions.describe_state_machine(sfn, target.arn)
    if version is None:
        record.steps.append(core.version_gone(target))
        return
    record.target["definition_digest"] = core.digest(version["definition"])
    plan = core.plan_rollback(name, current["definition"], current["roleArn"], target, version["definition"],
                              record.promotion_id, record.requested_by)
    if plan.action is DeployAction.NOOP:
        record.steps.append(plan.unchanged())
        return
    run.step = Step.DEPLOY
    record.target["version_arn"] = stepfunctions.publish(
        sfn, arn=arn, name=name, definition=plan.definition, role_arn=plan.role_arn, exists=True,
        description=plan.description)
    record.steps.append(plan.deployed(record.target["version_arn"]))


# ---- the definitions ----

def promotion_ops(w: Wiring) -> list[dg.OpDefinition]:
    """The three ops, each a thin shell over its body (the resource keys come from the settings)."""

    @dg.op(required_resource_keys=w.resource_keys, out=dg.Out(list))
    def promotion_checks(context: dg.OpExecutionContext, config: ChecksConfig):
        """The sanity checks alone, read-only: for a pull request or a data scientist to rerun."""
        return check_only(Run(w, context), config)

    @dg.op(required_resource_keys=w.announcing_keys, out=dg.Out(dict))
    def promote_flow(context: dg.OpExecutionContext, config: PromotionConfig):
        """Checks, then (only if all passed) productionize, then the audit record, whatever happened."""
        return promote(Run(w, context), config)

    @dg.op(required_resource_keys=w.announcing_keys, out=dg.Out(dict))
    def rollback_flow(context: dg.OpExecutionContext, config: RollbackConfig):
        """Put production back on an earlier published version (by publishing its definition as
        the newest version), audited like a promotion."""
        return roll_back(Run(w, context), config)

    return [promotion_checks, promote_flow, rollback_flow]


KINDS = {"promotion_checks": "checks", "promote_flow": Kind.PROMOTION, "rollback_flow": Kind.ROLLBACK}


def launch_config(job: str, serializing: bool) -> dg.PartitionedConfig:
    """What picking a partition in the Launchpad gives: the config with flow and project filled
    in (blanks for the rest) and, for the jobs that change production, the concurrency tag."""
    def config_for(key: str) -> dict[str, Any]:
        return {"ops": {job: {"config": core.launch_fields(KINDS[job], key)}}}

    def tags_for(key: str) -> dict[str, str]:
        return {PROMOTION_TAG: key} if serializing else {}

    return dg.PartitionedConfig(partitions_def=PROMOTED, run_config_for_partition_key_fn=config_for,
                                tags_for_partition_key_fn=tags_for)


def one_op_job(op: dg.OpDefinition, description: str, serializing: bool) -> dg.JobDefinition:
    """A job named like its one op (CI's run config is `ops.<job>.config`), run in process,
    partitioned by production state machine for the Launchpad (a launch without a partition,
    as CI's, gives its own config and tag)."""
    return dg.JobDefinition(name=op.name, graph_def=dg.GraphDefinition(f"{op.name}_graph", node_defs=[op]),
                            executor_def=dg.in_process_executor, description=description,
                            tags={"platform_ops/kind": "promotion"}, config=launch_config(op.name, serializing))


def promotion_jobs(w: Wiring) -> list[dg.JobDefinition]:
    checks, promote_op, rollback_op = promotion_ops(w)
    serializing = (f"Launch a partition (the production state machine, <project>.prod.<Flow>; Add partition for "
                   f"a new flow), or from CI with the run tag {PROMOTION_TAG}=<project>.prod.<Flow>.")
    return [one_op_job(checks, "The promotion sanity checks alone (read-only).", serializing=False),
            one_op_job(promote_op, f"Checks, productionize, audit record, Slack. {serializing}", serializing=True),
            one_op_job(rollback_op, f"Production back on an earlier version, audited, Slack. {serializing}",
                       serializing=True)]


def audit_log_spec(w: Wiring) -> dg.AssetSpec:
    """Descriptions render as markdown: the key pattern is a code span, or `<flow>` vanishes as a tag."""
    return dg.AssetSpec(
        AUDIT_LOG, group_name=GROUP, partitions_def=PROMOTED, kinds={"s3"},
        description=f"Every promotion and rollback attempt, one materialization per immutable record in "
                    f"`s3://{w.p.audit_bucket}/{w.p.audit_prefix}/<flow>/`; one partition per production "
                    "state machine.")


def history_asset(w: Wiring) -> dg.AssetsDefinition:
    @dg.asset(group_name=GROUP, deps=[AUDIT_LOG], required_resource_keys={aws_resource_key(w.p.target)},
              io_manager_key="metrics_io_manager", kinds={"pandas", "s3"})
    def promotion_history(context: dg.AssetExecutionContext) -> pd.DataFrame:
        """All audit records as one table: who promoted what, when, with what outcome."""
        with count_calls() as calls:
            records = s3.read_json_under(aws_for(context, w.target.name).client("s3"), w.p.audit_bucket,
                                         w.p.audit_prefix)
        frame = history_frame(records)
        context.add_output_metadata({
            "records": len(frame), "aws_calls": dg.MetadataValue.json(dict(calls)),
            "by_outcome": dg.MetadataValue.json(frame["outcome"].value_counts().to_dict() if len(frame) else {}),
            "latest": metadata_table(frame.tail(20).iloc[::-1].to_dict("records"), HISTORY_COLUMNS),
        })
        return frame

    return promotion_history


def history_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{**{c: r.get(c) for c in HISTORY_COLUMNS}, "to_version_arn": (r.get("target") or {}).get("version_arn")}
            for r in records]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return frame.sort_values("started_at", kind="stable").reset_index(drop=True)


def promotion_defs(settings: Settings) -> dg.Definitions:
    """Nothing without a `promotion` section: the jobs are not offered."""
    w = Wiring.of(settings)
    if w is None:
        return dg.Definitions()
    return dg.Definitions(jobs=promotion_jobs(w), assets=[audit_log_spec(w), history_asset(w)])
