"""Promotion wiring: jobs `promotion_checks`, `promote_flow` and `rollback_flow` (one op each,
named after its job, so a launch from CI sets `ops.<job>.config`), the external asset
`promotion_audit_log` (one materialization per audit record, one partition per production state
machine) and the asset `promotion_history` (every record, as a table for auditors).

A promotion or rollback runs only with the tag `platform_ops/promotion=<production state
machine>`: dagster.yaml limits that tag to one run per value, so a second launch for the same
flow waits in the queue instead of racing the first.
"""


import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from platform_ops.adapters import s3, stepfunctions
from platform_ops.adapters.aws import AwsEnvironmentResource, AwsError, count_calls
from platform_ops.metadata import table as metadata_table
from platform_ops.naming import NamingError
from platform_ops.promotion import core
from platform_ops.promotion.lint import lint_package, package_sha
from platform_ops.redaction import redact_data
from platform_ops.resources import aws_for, aws_resource_key
from platform_ops.settings import EnvironmentSettings, PromotionSettings, Settings

GROUP = "promotion"
PROMOTION_TAG = "platform_ops/promotion"
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


@dataclass
class Staging:
    """What the checks learned about the staging deployment."""

    arn: str
    definition: str
    role_arn: str
    deployment: core.Deployment
    package: bytes | None
    translated: str
    latest_run_arn: str | None
    production: dict | None  # DescribeStateMachine of the production deployment, None before the first


@dataclass
class Progress:
    """The step an attempt is in: whatever fails there is recorded against it."""

    step: str = "resolve"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def promotion_defs(settings: Settings) -> dg.Definitions:
    p: PromotionSettings | None = settings.promotion
    if p is None:
        return dg.Definitions()
    source_env = settings.environments[p.source]
    target_env = settings.environments[p.target]
    keys = {aws_resource_key(p.source), aws_resource_key(p.target)}
    mapping = core.IdentifierMap(accounts={source_env.account_id: target_env.account_id}, queues=p.queues,
                                 roles=p.roles, buckets=p.buckets, staging_queues=source_env.job_queues)
    rules = core.DEFAULT_RULES + tuple(core.forbid_rule(r.name, r.description, r.forbid) for r in p.rules)

    def aws(context: Any, env: EnvironmentSettings) -> AwsEnvironmentResource:
        return aws_for(context, env.name)

    def valid(request: core.PromotionRequest, needs_reason: bool) -> None:
        try:
            core.validate_request(request, needs_reason)
        except (ValueError, NamingError) as exc:
            raise dg.Failure(f"bad config: {exc}") from None

    def serialized(context: Any, target_name: str) -> None:
        tag = context.run.tags.get(PROMOTION_TAG)
        if tag != target_name:
            raise dg.Failure(f"launch with the run tag {PROMOTION_TAG}={target_name} (found {tag!r}): dagster.yaml "
                             "allows one run per value, so promotions of one flow never overlap")

    def resolve(context: Any, request: core.PromotionRequest) -> tuple[str, dict, core.Deployment]:
        """The staging deployment asked for; bad config (it is not there, or not Metaflow's) when not."""
        sfn = aws(context, source_env).client("stepfunctions")
        arn = stepfunctions.state_machine_arn(source_env.account_id, source_env.region, request.source_name)
        described = stepfunctions.describe_state_machine(sfn, arn)
        if described is None:
            raise dg.Failure(f"bad config: no staging deployment {request.source_name} in {source_env.name} "
                             f"({source_env.account_id}); deploy it with `python flow.py --branch {request.branch} "
                             "step-functions create`, or name it with staging_state_machine")
        try:
            return arn, described, core.deployment_of(described["definition"])
        except ValueError as exc:
            raise dg.Failure(f"bad config: {request.source_name}: {exc}") from None

    def gather(context: Any, request: core.PromotionRequest, arn: str, described: dict,
               deployment: core.Deployment, progress: Progress, checks: list[core.CheckResult]) -> Staging:
        """Every check into `checks`, each reported even after another failed. Read-only; an AWS
        read that fails raises, with `progress` naming it and the checks so far kept."""
        src = aws(context, source_env)
        sfn = src.client("stepfunctions")
        definition = described["definition"]

        package = None
        try:
            package = s3.read_url(src.client("s3"), deployment.code_url)
        except (AwsError, ValueError) as exc:
            checks.append(core.CheckResult("lint", False, f"cannot read the code package {deployment.code_url}: {exc}"))
        if package is not None:
            sha = package_sha(package)
            if sha != deployment.code_sha:
                checks.append(core.CheckResult("lint", False, f"the code package's SHA-1 is {sha}, the deployment "
                                                              f"says {deployment.code_sha}"))
            else:
                checks.append(lint_package(package, deployment.script, p.lint_timeout_seconds, p.lint_isolation))

        checks.append(core.check_names(request, deployment))

        progress.step = "read staging runs"
        now = _now()
        executions = list(stepfunctions.recent_executions(sfn, arn, now - timedelta(hours=p.max_staging_age_hours)))
        promoted_digest = core.digest(definition)
        checks.append(core.check_latest_run(
            executions, now, p.max_staging_age_hours, promoted_digest,
            lambda e: core.digest(stepfunctions.definition_for_execution(sfn, e.arn))))
        latest = core.latest_finished(executions)

        progress.step = "read production"
        production = stepfunctions.describe_state_machine(aws(context, target_env).client("stepfunctions"),
                                                          target_arn(request))
        translated = core.translate(definition, project=request.project, flow=request.flow, branch=request.branch,
                                    mapping=mapping,
                                    production_token=core.production_token_of(production and production["definition"]))
        checks += core.check_definition(translated, mapping, rules)
        return Staging(arn, definition, described["roleArn"], deployment, package, translated,
                       latest.arn if latest else None, production)

    def target_arn(request: core.PromotionRequest) -> str:
        return stepfunctions.state_machine_arn(target_env.account_id, target_env.region, request.target_name)

    def new_record(context: Any, kind: str, flow: str, project: str, requested_by: str, reason: str,
                   started: datetime) -> core.AuditRecord:
        return core.AuditRecord(
            promotion_id=core.promotion_id(kind, flow, started, context.run_id), kind=kind, flow=flow, project=project,
            requested_by=requested_by, reason=reason, dagster_run_id=context.run_id, started_at=started.isoformat(),
            dagster_user=context.run.tags.get("dagster/user"),
            target={"environment": target_env.name, "account_id": target_env.account_id},
            lint_isolation=p.lint_isolation if kind == "promotion" else None)

    def attempt(context: Any, record: core.AuditRecord, progress: Progress, steps: Callable[[], None]) -> None:
        """Run an attempt's steps; whatever fails is recorded against the step in progress, so the
        record always gets written. Bad config (dg.Failure) is not an attempt and propagates."""
        try:
            steps()
        except dg.Failure:
            raise
        except Exception as exc:  # AWS, or a bug: either way the attempt is recorded
            if not isinstance(exc, AwsError):
                context.log.error(f"{record.kind} step {progress.step!r} raised:\n" + traceback.format_exc())
            detail = str(exc) if isinstance(exc, AwsError) else f"{type(exc).__name__}: {exc}"
            record.steps.append(core.StepResult(progress.step, False, detail))

    def finish(context: Any, record: core.AuditRecord, calls: Any) -> dg.Output:
        """Decide the outcome, store the record (never overwritten), show it in the UI; a failing
        attempt fails the run after its record is safe."""
        record.outcome = core.outcome(record.kind, record.checks, record.steps)
        record.production_changed = core.production_changed(record.steps)
        record.finished_at = _now().isoformat()
        target = record.target.get("state_machine_arn", "").rsplit(":", 1)[-1]
        key = core.record_key(p.audit_prefix, record.flow, record.promotion_id)
        try:
            s3.put_new_json(aws(context, target_env).client("s3"), p.audit_bucket, key, record.to_dict())
        except AwsError as exc:
            context.log.error("audit record not stored; here it is: "
                              + json.dumps(redact_data(record.to_dict()), sort_keys=True))
            raise dg.Failure(f"{record.kind} {record.outcome}, but its audit record was not stored at "
                             f"s3://{p.audit_bucket}/{key}: {exc}. The record is in this run's logs.") from exc
        metadata = {
            "outcome": record.outcome, "production_changed": record.production_changed,
            "promotion_id": record.promotion_id, "requested_by": record.requested_by,
            "reason": record.reason, "record": dg.MetadataValue.path(f"s3://{p.audit_bucket}/{key}"),
            "checks": metadata_table([c.__dict__ for c in record.checks], CHECK_COLUMNS),
            "steps": metadata_table([s.__dict__ for s in record.steps], STEP_COLUMNS),
            "version_arn": record.target.get("version_arn") or "", "execution_arn": record.execution_arn or "",
            "aws_calls": dg.MetadataValue.json(dict(calls)),
        }
        context.instance.add_dynamic_partitions(PROMOTED.name, [target])
        context.log_event(dg.AssetMaterialization(AUDIT_LOG, partition=target, metadata=metadata,
                                                  description=f"{record.kind} of {target}: {record.outcome}"))
        if record.outcome in core.FAILING:
            raise dg.Failure(core.failure_summary(record), metadata=metadata)
        return dg.Output(record.to_dict(), metadata=metadata)

    @dg.op(required_resource_keys=keys, out=dg.Out(list))
    def promotion_checks(context: dg.OpExecutionContext, config: ChecksConfig):
        """The sanity checks alone, read-only: for a pull request or a data scientist to rerun."""
        request = config.request()
        valid(request, needs_reason=False)
        progress, checks = Progress(), []
        with count_calls() as calls:
            try:
                gather(context, request, *resolve(context, request), progress, checks)
            except AwsError as exc:
                raise dg.Failure(f"{progress.step}: {exc}") from exc
        rows = [c.__dict__ for c in checks]
        metadata = {"checks": metadata_table(rows, CHECK_COLUMNS), "aws_calls": dg.MetadataValue.json(dict(calls))}
        if not all(c.passed for c in checks):
            raise dg.Failure("checks failed: " + " | ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed),
                             metadata=metadata)
        return dg.Output(rows, metadata=metadata)

    @dg.op(required_resource_keys=keys, out=dg.Out(dict))
    def promote_flow(context: dg.OpExecutionContext, config: PromotionConfig):
        """Checks, then (only if all passed) productionize, then the audit record, whatever happened."""
        request = config.request(trigger=config.trigger)
        valid(request, needs_reason=True)
        serialized(context, request.target_name)
        record = new_record(context, "promotion", request.flow, request.project, request.requested_by,
                            request.reason, _now())
        record.branch = request.branch
        record.source = {"environment": source_env.name, "account_id": source_env.account_id, "state_machine_arn":
                         stepfunctions.state_machine_arn(source_env.account_id, source_env.region, request.source_name)}
        record.target["state_machine_arn"] = target_arn(request)
        progress = Progress()

        def steps() -> None:
            staging = gather(context, request, *resolve(context, request), progress, record.checks)
            record.source.update(definition_digest=core.digest(staging.definition),
                                 latest_run_arn=staging.latest_run_arn)
            record.code_package = {"url": staging.deployment.code_url, "sha": staging.deployment.code_sha}
            record.target["definition_digest"] = core.digest(staging.translated)
            if all(c.passed for c in record.checks):
                productionize(context, request, staging, record, progress)

        with count_calls() as calls:
            attempt(context, record, progress, steps)
        return finish(context, record, calls)

    def productionize(context: Any, request: core.PromotionRequest, staging: Staging, record: core.AuditRecord,
                      progress: Progress) -> None:
        """Code package, then the state machine (one atomic create-or-update that publishes a
        version), then the trigger; each recorded once done. A step that fails raises: the ones
        before the deploy changed nothing, and a failed trigger leaves the deploy in place."""
        sfn = aws(context, target_env).client("stepfunctions")
        arn = target_arn(request)
        current = staging.production
        action = core.deploy_action(current and current["definition"], staging.translated)
        if current:
            record.target["previous_definition_digest"] = core.digest(current["definition"])
            progress.step = "read production versions"
            published = stepfunctions.versions(sfn, arn)
            record.target["previous_version_arn"] = max(published, key=lambda v: v.number).arn if published else None
        if action == "noop":
            record.steps.append(core.StepResult("deploy", True, f"{request.target_name} already runs this definition"))
            return
        progress.step = "code package"
        url = core.translate_url(staging.deployment.code_url, mapping)
        written = s3.copy_content_addressed(staging.package, aws(context, target_env).client("s3"), url)
        record.steps.append(core.StepResult("code package", True, f"{'copied to' if written else 'already at'} {url}"))
        progress.step = "deploy"
        record.target["version_arn"] = stepfunctions.publish(
            sfn, arn=arn, name=request.target_name, definition=staging.translated,
            role_arn=core.production_role(staging.role_arn, mapping), exists=current is not None,
            description=f"promotion {record.promotion_id} by {request.requested_by}")
        record.steps.append(core.StepResult("deploy", True, f"{action}d {request.target_name}, published "
                                                            f"{record.target['version_arn'].rsplit(':', 1)[-1]}",
                                            changed=True))
        if request.trigger:
            progress.step = "trigger"
            record.execution_arn = stepfunctions.start(sfn, arn, core.TRIGGER_INPUT)
            record.steps.append(core.StepResult("trigger", True, record.execution_arn.rsplit(":", 1)[-1]))

    @dg.op(required_resource_keys=keys, out=dg.Out(dict))
    def rollback_flow(context: dg.OpExecutionContext, config: RollbackConfig):
        """Put production back on an earlier published version (by publishing its definition as
        the newest version), audited like a promotion."""
        request = core.PromotionRequest(config.flow, config.project, None, config.requested_by, config.reason)
        valid(request, needs_reason=True)
        serialized(context, request.target_name)
        record = new_record(context, "rollback", config.flow, config.project, config.requested_by, config.reason,
                            _now())
        record.target["state_machine_arn"] = target_arn(request)
        progress = Progress("read production")
        with count_calls() as calls:
            attempt(context, record, progress, lambda: restore(context, config, record, progress))
        return finish(context, record, calls)

    def restore(context: Any, config: RollbackConfig, record: core.AuditRecord, progress: Progress) -> None:
        """Find the version to put back and publish its definition as the newest version; a
        missing deployment or version asked for is bad config."""
        sfn = aws(context, target_env).client("stepfunctions")
        arn, name = record.target["state_machine_arn"], record.target["state_machine_arn"].rsplit(":", 1)[-1]
        current = stepfunctions.describe_state_machine(sfn, arn)
        if current is None:
            raise dg.Failure(f"bad config: no production deployment {name} in {target_env.name}")
        record.target["previous_definition_digest"] = core.digest(current["definition"])
        progress.step = "read versions"
        published = stepfunctions.versions(sfn, arn)
        newest = max(published, key=lambda v: v.number).arn if published else None
        try:
            target = core.rollback_target(published, newest, config.to_version)
        except ValueError as exc:
            raise dg.Failure(f"bad config: {exc}") from None
        record.target.update(previous_version_arn=newest, restored_version_arn=target.arn)
        record.checks.append(core.CheckResult("version", True, f"restore version {target.number}"))
        progress.step = "read version"
        version = stepfunctions.describe_state_machine(sfn, target.arn)
        if version is None:
            record.steps.append(core.StepResult("read version", False,
                                                f"version {target.number} is gone ({target.arn})"))
            return
        record.target["definition_digest"] = core.digest(version["definition"])
        if record.target["definition_digest"] == record.target["previous_definition_digest"]:
            record.steps.append(core.StepResult("deploy", True, f"{name} already runs version {target.number}'s "
                                                                "definition"))
            return
        progress.step = "deploy"
        record.target["version_arn"] = stepfunctions.publish(
            sfn, arn=arn, name=name, definition=version["definition"], role_arn=current["roleArn"], exists=True,
            description=f"rollback {record.promotion_id} to version {target.number} by {config.requested_by}")
        record.steps.append(core.StepResult("deploy", True, f"published version {target.number}'s definition as "
                                                            f"{record.target['version_arn'].rsplit(':', 1)[-1]}",
                                            changed=True))

    audit_log = dg.AssetSpec(
        AUDIT_LOG, group_name=GROUP, partitions_def=PROMOTED, kinds={"s3"},
        description=f"Every promotion and rollback attempt, one materialization per immutable record in "
                    f"s3://{p.audit_bucket}/{p.audit_prefix}/<flow>/; one partition per production state machine.")

    @dg.asset(group_name=GROUP, deps=[AUDIT_LOG], required_resource_keys={aws_resource_key(p.target)},
              io_manager_key="metrics_io_manager", kinds={"pandas", "s3"})
    def promotion_history(context: dg.AssetExecutionContext) -> pd.DataFrame:
        """All audit records as one table: who promoted what, when, with what outcome."""
        with count_calls() as calls:
            records = s3.read_json_under(aws(context, target_env).client("s3"), p.audit_bucket, p.audit_prefix)
        frame = history_frame(records)
        context.add_output_metadata({
            "records": len(frame), "aws_calls": dg.MetadataValue.json(dict(calls)),
            "by_outcome": dg.MetadataValue.json(frame["outcome"].value_counts().to_dict() if len(frame) else {}),
            "latest": metadata_table(frame.tail(20).iloc[::-1].to_dict("records"), HISTORY_COLUMNS),
        })
        return frame

    def one_op_job(op: dg.OpDefinition, description: str) -> dg.JobDefinition:
        """A job named like its one op (CI's run config is `ops.<job>.config`), run in process."""
        return dg.JobDefinition(name=op.name, graph_def=dg.GraphDefinition(f"{op.name}_graph", node_defs=[op]),
                                executor_def=dg.in_process_executor, description=description,
                                tags={"platform_ops/kind": "promotion"})

    return dg.Definitions(
        jobs=[
            one_op_job(promotion_checks, "The promotion sanity checks alone (read-only)."),
            one_op_job(promote_flow, f"Checks, productionize, audit record. Needs the run tag "
                                     f"{PROMOTION_TAG}=<project>.prod.<Flow>."),
            one_op_job(rollback_flow, f"Production back on an earlier version, audited. Needs the run tag "
                                      f"{PROMOTION_TAG}=<project>.prod.<Flow>."),
        ],
        assets=[audit_log, promotion_history],
    )


def history_frame(records: list[dict]) -> pd.DataFrame:
    rows = [{**{c: r.get(c) for c in HISTORY_COLUMNS}, "to_version_arn": (r.get("target") or {}).get("version_arn")}
            for r in records]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return frame.sort_values("started_at", kind="stable").reset_index(drop=True)
