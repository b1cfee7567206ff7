"""Promotion, decided: production names and tokens as Metaflow makes them, the staging →
production translation of a Metaflow state machine definition, definition-safety rules kept as
data, and the plans of a promotion and a rollback (what to do, what to record). No AWS, no
Dagster: the wiring reads, asks a plan, performs it and records what the plan says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import string
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from platform_ops import naming
from platform_ops.messages import MAX_BLOCKS, MAX_HEADER_CHARS, MAX_SECTION_CHARS, SlackMessage, escape, pack
from platform_ops.observations import StateMachineVersion as Version
from platform_ops.vocabulary import format_duration


@dataclass(frozen=True)
class CheckResult:
    """One named check: every check runs and is reported, even after another failed."""

    name: str
    passed: bool
    detail: str


def token_prefix(project: str, branch: str) -> str:
    """Metaflow's production-token prefix for a @project deployment (step_functions_cli)."""
    digest = hashlib.sha1(f"{project}.{branch}".encode()).digest()
    return "mfprj-" + base64.b32encode(digest).decode()[:16].lower()


def first_token(prefix: str) -> str:
    """The token Metaflow generates first for `prefix` (production_token._token_generator):
    deterministic, so a re-run of the same promotion produces the same definition."""
    head = f"{prefix}-0-"
    rng = random.Random(zlib.adler32(head.encode()))
    return head + "".join(rng.sample(string.ascii_lowercase, 4))


@dataclass(frozen=True)
class IdentifierMap:
    """Staging → production identifiers (settings section `promotion`)."""

    accounts: Mapping[str, str] = field(default_factory=dict)
    queues: Mapping[str, str] = field(default_factory=dict)
    roles: Mapping[str, str] = field(default_factory=dict)
    buckets: Mapping[str, str] = field(default_factory=dict)
    staging_queues: tuple[str, ...] = ()  # staging's own queues: never allowed in production, mapped or not


def _walk(value: Any, fn: Callable[[str, str | None], str], key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, fn, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn, key) for v in value]
    if isinstance(value, str):
        return fn(value, key)
    return value


def translate(definition: str, *, project: str, flow: str, branch: str, mapping: IdentifierMap,
              production_token: str | None = None) -> str:
    """The production definition of a staging (`test.<branch>`) deployment, as
    `step-functions create --production` would write it: `--branch X` becomes `--production`,
    SFN_STATE_MACHINE and the production token change, and staging's queues, roles, buckets and
    account ids become production's."""
    naming.check_project(project)
    naming.check_flow(flow)
    naming.check_branch(branch)
    staging_name = str(naming.state_machine_name(project, flow, branch=branch))
    production_name = str(naming.state_machine_name(project, flow, production=True))
    staging_token_prefix = token_prefix(project, f"test.{branch}")
    token = production_token or first_token(token_prefix(project, "prod"))
    token_re = re.compile(re.escape(staging_token_prefix) + r"-\d+-[a-z]{4}")
    replacements: list[tuple[str, str]] = [(f" --branch {branch} ", " --production ")]
    replacements += list(mapping.roles.items())
    replacements += [(f"s3://{a}/", f"s3://{b}/") for a, b in mapping.buckets.items()]
    replacements += [(f'"{a}"', f'"{b}"') for a, b in mapping.buckets.items()]  # the code download command
    replacements += [(f"queue={a},", f"queue={b},") for a, b in mapping.queues.items()]
    replacements += [(f":{a}:", f":{b}:") for a, b in mapping.accounts.items()]

    def fix(text: str, key: str | None) -> str:
        if text == staging_name:
            return production_name
        if key == "JobQueue" and text in mapping.queues:
            return mapping.queues[text]
        text = token_re.sub(token, text)
        for old, new in replacements:
            text = text.replace(old, new)
        return text

    data = _walk(json.loads(definition), fix)
    return json.dumps(data, indent=1)


# ---- definition safety: rules are data, so a team can add its own ----

@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[dict, IdentifierMap], list[str]]  # -> problems found


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _batch_tasks(states: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, dict]]:
    for name, state in states.items():
        if state.get("Type") == "Task" and "batch:submitJob" in state.get("Resource", ""):
            yield prefix + name, state
        for nested in ([state.get("Iterator") or state.get("ItemProcessor") or {}] + state.get("Branches", [])):
            yield from _batch_tasks(nested.get("States", {}), f"{prefix}{name}/")


def _no_staging_identifiers(definition: dict, mapping: IdentifierMap) -> list[str]:
    found = []
    needles = ([f":{a}:" for a in mapping.accounts] + list(mapping.roles) + [f"s3://{b}/" for b in mapping.buckets]
               + [f'"{b}"' for b in mapping.buckets])
    for text in _strings(definition):
        found += [n for n in needles if n in text]
    staging_queues = set(mapping.queues) | set(mapping.staging_queues)
    for name, task in _batch_tasks(definition.get("States", {})):
        queue = (task.get("Parameters") or {}).get("JobQueue")
        if queue in staging_queues:
            found.append(f"{name}: JobQueue {queue}")
    for text in _strings(definition):
        found += [f"queue={q}" for q in staging_queues if f"queue={q}," in text]
    return sorted(set(found))


def _retry_strategy_everywhere(definition: dict, mapping: IdentifierMap) -> list[str]:
    return [f"{name}: no RetryStrategy" for name, task in _batch_tasks(definition.get("States", {}))
            if not ((task.get("Parameters") or {}).get("RetryStrategy") or {}).get("Attempts")]


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("no_staging_identifiers", "no staging account id, queue, role or bucket remains",
         _no_staging_identifiers),
    Rule("retry_strategy", "every Batch task has a retry strategy", _retry_strategy_everywhere),
)


def check_definition(production_definition: str, mapping: IdentifierMap,
                     rules: Iterable[Rule] = DEFAULT_RULES) -> list[CheckResult]:
    """Every rule, each a named result with what it found."""
    data = json.loads(production_definition)
    results = []
    for rule in rules:
        problems = rule.check(data, mapping)
        results.append(CheckResult(f"definition: {rule.name}", not problems,
                                   rule.description if not problems else "; ".join(problems[:10])))
    return results


def digest(definition: str) -> str:
    """A stable digest of a definition (key order and whitespace do not matter)."""
    canonical = json.dumps(json.loads(definition), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def forbid_rule(name: str, description: str, pattern: str) -> Rule:
    """A team's own rule from settings: `pattern` must not appear in the production definition."""
    compiled = re.compile(pattern)

    def check(definition: dict, mapping: IdentifierMap) -> list[str]:
        text = json.dumps(definition)
        return sorted({f"matches {pattern!r}: {m.group(0)[:80]!r}" for m in compiled.finditer(text)})

    return Rule(name, description, check)


# ---- what a staging deployment says about itself ----

def _start_parameters(definition: dict) -> dict:
    start = definition.get("States", {}).get(definition.get("StartAt", "start"), {})
    return start.get("Parameters") or {}


def _environment(definition: dict) -> dict[str, str]:
    env = (_start_parameters(definition).get("ContainerOverrides") or {}).get("Environment") or []
    return {e["Name"]: e["Value"] for e in env if "Value" in e}


@dataclass(frozen=True)
class Deployment:
    """The facts promotion needs from a Metaflow state machine definition."""

    owner: str
    flow_name: str
    state_machine: str  # SFN_STATE_MACHINE
    production_token: str
    code_url: str
    code_sha: str
    script: str  # the flow file inside the code package
    tags: dict[str, str]


def deployment_of(definition: str) -> Deployment:
    """Read a Metaflow definition; ValueError naming what is missing when it is not one."""
    try:
        data = json.loads(definition)
    except ValueError as exc:
        raise ValueError(f"the state machine definition is not JSON: {exc}") from None
    params = _start_parameters(data)
    env = _environment(data)
    meta = params.get("Parameters") or {}
    missing = [k for k in ("METAFLOW_CODE_URL", "METAFLOW_CODE_SHA", "METAFLOW_VERSION", "SFN_STATE_MACHINE")
               if k not in env]
    if missing:
        raise ValueError(f"not a Metaflow deployment: the start step's environment lacks {', '.join(missing)}")
    try:
        version = json.loads(env["METAFLOW_VERSION"])
    except ValueError:
        raise ValueError("not a Metaflow deployment: METAFLOW_VERSION is not JSON") from None
    return Deployment(
        owner=meta.get("metaflow.owner", env.get("METAFLOW_OWNER", "")),
        flow_name=meta.get("metaflow.flow_name", version.get("flow_name", "")),
        state_machine=env["SFN_STATE_MACHINE"],
        production_token=meta.get("metaflow.production_token", env.get("METAFLOW_PRODUCTION_TOKEN", "")),
        code_url=env["METAFLOW_CODE_URL"], code_sha=env["METAFLOW_CODE_SHA"],
        script=version.get("script", ""),
        tags={k: v for k, v in (params.get("Tags") or {}).items() if not k.endswith(".$")},  # .$: set at run time
    )


def production_token_of(definition: str | None) -> str | None:
    """The token a deployed production definition carries: Metaflow keeps it on redeploy."""
    if not definition:
        return None
    try:
        return deployment_of(definition).production_token or None
    except ValueError:
        return None


# ---- the checks that do not need to run anything ----

@dataclass(frozen=True)
class PromotionRequest:
    """What an operator asked for; `branch` is None for a rollback (production only)."""

    flow: str
    project: str
    branch: str | None
    requested_by: str
    reason: str
    trigger: bool = True
    staging_state_machine: str | None = None

    @property
    def source_name(self) -> str:
        return self.staging_state_machine or str(naming.state_machine_name(self.project, self.flow, branch=self.branch))

    @property
    def target_name(self) -> str:
        return str(naming.state_machine_name(self.project, self.flow, production=True))


def validate_request(request: PromotionRequest, needs_reason: bool = True) -> None:
    """Bad input, named, before anything touches AWS."""
    naming.check_project(request.project)
    naming.check_flow(request.flow)
    if request.branch is not None:
        naming.check_branch(request.branch)
    for key in ("requested_by", "reason") if needs_reason else ():
        if not getattr(request, key).strip():
            raise ValueError(f"{key}: required, and not blank")
    if request.staging_state_machine:
        parsed = naming.parse_state_machine_name(request.staging_state_machine)
        if parsed.is_production:
            raise ValueError(f"staging_state_machine {request.staging_state_machine!r} is a production deployment")
        if (parsed.project, parsed.flow) != (request.project, request.flow):
            raise ValueError(f"staging_state_machine {request.staging_state_machine!r} is not {request.project}'s "
                             f"{request.flow}")


def check_names(request: PromotionRequest, deployment: Deployment) -> CheckResult:
    """Flow, project, branch and tags follow the conventions the project template enforces."""
    problems = []
    for check in (lambda: naming.parse_state_machine_name(request.source_name),
                  lambda: naming.check_user(deployment.owner)):
        try:
            check()
        except naming.NamingError as exc:
            problems.append(str(exc))
    if deployment.flow_name != request.flow:
        problems.append(f"the deployment runs flow {deployment.flow_name!r}, not {request.flow!r}")
    if deployment.state_machine != request.source_name:
        problems.append(f"the deployment calls itself {deployment.state_machine!r}, not {request.source_name!r}")
    for key, value in deployment.tags.items():
        try:
            naming.check_tag(key, value)
        except naming.NamingError as exc:
            problems.append(str(exc))
    return CheckResult("naming", not problems, "; ".join(problems) or
                       f"{request.source_name}: flow, project, branch, owner {deployment.owner!r} and "
                       f"{len(deployment.tags)} tags follow the conventions")


def latest_finished(executions: list[Any]) -> Any | None:
    """The newest execution that stopped (`executions` newest first); a running one proves nothing yet."""
    return next((e for e in executions if e.status != "RUNNING"), None)


def check_latest_run(executions: list[Any], now: Any, max_age_hours: int, promoted_digest: str,
                     run_digest: Callable[[Any], str]) -> CheckResult:
    """The most recent finished staging execution succeeded, recently, on the definition being
    promoted. `executions` newest first (ListExecutions); a running one proves nothing yet."""
    latest = latest_finished(executions)
    if latest is None:
        return CheckResult("latest staging run", False,
                           f"no finished execution in staging in the last {max_age_hours} h: run it there first")
    age = now - (latest.stopped_at or latest.started_at)
    age_hours = age.total_seconds() / 3600
    problems = []
    if latest.status != "SUCCEEDED":
        problems.append(f"{latest.name} {latest.status}" + (f" ({latest.error})" if latest.error else ""))
    if age_hours > max_age_hours:
        problems.append(f"{latest.name} finished {format_duration(age)} ago (limit {max_age_hours} h)")
    if not problems and run_digest(latest) != promoted_digest:
        problems.append(f"{latest.name} ran an older definition than the one being promoted; run the current one")
    return CheckResult("latest staging run", not problems, "; ".join(problems) or
                       f"{latest.name} SUCCEEDED {format_duration(age)} ago on this definition")


# ---- what to do, and what happened ----

class DeployAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    NOOP = "noop"  # production already runs this definition: nothing to write


def deploy_action(production_definition: str | None, definition: str) -> DeployAction:
    """Deploying what production already runs changes nothing (a promotion or a rollback)."""
    if production_definition is None:
        return DeployAction.CREATE
    return DeployAction.NOOP if digest(production_definition) == digest(definition) else DeployAction.UPDATE


def rollback_target(versions: list[Version], current_version_arn: str | None, requested: str | None) -> Version:
    """The version to put back: `requested` (a number or version ARN), else the one published
    before the current one. ValueError naming the versions there are."""
    ordered = sorted(versions, key=lambda v: v.number, reverse=True)
    known = ", ".join(str(v.number) for v in ordered) or "none"
    if requested:
        for v in ordered:
            if requested in (v.arn, str(v.number)):
                return v
        raise ValueError(f"to_version {requested!r}: no such version (published: {known})")
    current = next((i for i, v in enumerate(ordered) if v.arn == current_version_arn), 0)
    if current + 1 >= len(ordered):
        raise ValueError(f"no version before the current one to roll back to (published: {known})")
    return ordered[current + 1]


TRIGGER_INPUT = json.dumps({"Parameters": "{}"})  # `step-functions trigger` with the flow's defaults


def translate_url(url: str, mapping: IdentifierMap) -> str:
    """An s3:// URL in production's bucket."""
    for old, new in mapping.buckets.items():
        if url.startswith(f"s3://{old}/"):
            return f"s3://{new}/" + url[len(f"s3://{old}/"):]
    return url


def production_role(role_arn: str, mapping: IdentifierMap) -> str:
    """The state machine's execution role in production: named in the mapping, else the same
    role name in the production account."""
    if role_arn in mapping.roles:
        return mapping.roles[role_arn]
    for old, new in mapping.accounts.items():
        role_arn = role_arn.replace(f":{old}:", f":{new}:")
    return role_arn


def tail(arn: str) -> str:
    """The last part of an ARN: a state machine's name, a version's number, an execution's name."""
    return arn.rsplit(":", 1)[-1]


def newest_version(versions: list[Version]) -> Version | None:
    return max(versions, key=lambda v: v.number) if versions else None


class Kind(StrEnum):
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


class Step(StrEnum):
    """The steps of an attempt; whatever fails is recorded against the one in progress."""

    RESOLVE = "resolve"
    READ_STAGING_RUNS = "read staging runs"
    READ_PRODUCTION = "read production"
    READ_PRODUCTION_VERSIONS = "read production versions"
    CODE_PACKAGE = "code package"
    DEPLOY = "deploy"
    TRIGGER = "trigger"
    READ_VERSIONS = "read versions"  # a rollback's
    READ_VERSION = "read version"


@dataclass(frozen=True)
class StepResult:
    """One step of an attempt (an AWS read, the code package, the deploy, the trigger), and
    whether it changed production: the outcome is decided from these."""

    name: str  # a Step
    passed: bool
    detail: str
    changed: bool = False


class Outcome(StrEnum):
    """How an attempt ended; each value is the word its audit record and the UI show."""

    PROMOTED = "promoted"
    PROMOTED_NOT_TRIGGERED = "promoted-not-triggered"
    ROLLED_BACK = "rolled-back"
    NO_OP = "no-op"
    BLOCKED = "blocked"
    FAILED = "failed"
    INCOMPLETE = "incomplete"


OUTCOMES = {
    Outcome.PROMOTED: "production runs the promoted definition (and its run started, if asked)",
    Outcome.PROMOTED_NOT_TRIGGERED: "production runs the promoted definition, but its run could not be started",
    Outcome.ROLLED_BACK: "production runs the restored version's definition",
    Outcome.NO_OP: "production already ran it: nothing changed",
    Outcome.BLOCKED: "a check failed: nothing changed",
    Outcome.FAILED: "a step failed before production changed: nothing changed, a rerun is safe",
    Outcome.INCOMPLETE: "production changed, then a later step failed",
}
# the run fails, after its record
FAILING = frozenset({Outcome.PROMOTED_NOT_TRIGGERED, Outcome.BLOCKED, Outcome.FAILED, Outcome.INCOMPLETE})


def may_proceed(checks: list[CheckResult]) -> bool:
    """A promotion touches production only when every check passed."""
    return all(c.passed for c in checks)


def production_changed(steps: list[StepResult]) -> bool:
    return any(s.changed for s in steps)


def outcome(kind: str, checks: list[CheckResult], steps: list[StepResult]) -> Outcome:
    """One of OUTCOMES, from what the checks and steps say (a failed step stops an attempt)."""
    failed = [s.name for s in steps if not s.passed]
    if not may_proceed(checks):
        return Outcome.BLOCKED
    if failed and not production_changed(steps):
        return Outcome.FAILED
    if failed:
        only_the_trigger = kind == Kind.PROMOTION and failed == [Step.TRIGGER]
        return Outcome.PROMOTED_NOT_TRIGGERED if only_the_trigger else Outcome.INCOMPLETE
    if not production_changed(steps):
        return Outcome.NO_OP
    return Outcome.ROLLED_BACK if kind == Kind.ROLLBACK else Outcome.PROMOTED


def _failures(results: Iterable[CheckResult | StepResult]) -> str:
    return " | ".join(f"{r.name}: {r.detail}" for r in results if not r.passed)


def checks_failed(checks: list[CheckResult]) -> str | None:
    """What the checks-alone job fails with, or None when every check passed."""
    return None if may_proceed(checks) else "checks failed: " + _failures(checks)


def failure_summary(record: AuditRecord) -> str:
    """Why a failing attempt failed, and whether production changed: what the operator reads first."""
    failed = _failures([*record.checks, *record.steps])
    if not record.production_changed:
        return f"{record.kind} {record.outcome}: {failed}"
    now_runs = tail(record.target.get("version_arn") or "a new version")
    return (f"{record.kind} {record.outcome}: {failed} | production changed: "
            f"{tail(record.target.get('state_machine_arn', ''))} now runs version {now_runs}")


# ---- the plans: what an attempt does once it has read what it needs ----

def package_check(deployment: Deployment, read_error: str | None, sha: str | None) -> CheckResult | None:
    """The lint check's result when the code package cannot be linted (unreadable, or not the
    package the deployment names: a swapped package must not pass on another's lint); None
    when it is the deployed package, to be linted."""
    if read_error is not None:
        return CheckResult("lint", False, f"cannot read the code package {deployment.code_url}: {read_error}")
    if sha != deployment.code_sha:
        return CheckResult("lint", False, f"the code package's SHA-1 is {sha}, the deployment says "
                                          f"{deployment.code_sha}")
    return None


@dataclass(frozen=True)
class Staging:
    """What the checks learned about the staging deployment, and production's current definition."""

    arn: str
    definition: str
    role_arn: str
    deployment: Deployment
    package: bytes | None
    translated: str
    latest_run_arn: str | None
    production_definition: str | None  # None before the first promotion


def record_staging(record: AuditRecord, staging: Staging) -> None:
    """What an attempt records of what it read, whether or not the checks pass."""
    record.source.update(definition_digest=digest(staging.definition), latest_run_arn=staging.latest_run_arn)
    record.code_package = {"url": staging.deployment.code_url, "sha": staging.deployment.code_sha}
    record.target["definition_digest"] = digest(staging.translated)


@dataclass(frozen=True)
class PromotionPlan:
    """What a promotion whose checks passed does to production, and the step results it records."""

    action: DeployAction
    name: str  # the production state machine
    definition: str
    code_url: str  # where production's copy of the code package goes
    role_arn: str
    description: str  # the published version's
    trigger: bool
    previous_definition_digest: str | None  # None when there is no production deployment yet

    def unchanged(self) -> StepResult:
        return StepResult(Step.DEPLOY, True, f"{self.name} already runs this definition")

    def copied(self, written: bool) -> StepResult:
        return StepResult(Step.CODE_PACKAGE, True, f"{'copied to' if written else 'already at'} {self.code_url}")

    def deployed(self, version_arn: str) -> StepResult:
        return StepResult(Step.DEPLOY, True, f"{self.action}d {self.name}, published {tail(version_arn)}",
                          changed=True)

    @staticmethod
    def triggered(execution_arn: str) -> StepResult:
        return StepResult(Step.TRIGGER, True, tail(execution_arn))


def plan_promotion(request: PromotionRequest, staging: Staging, mapping: IdentifierMap,
                   promotion_id: str) -> PromotionPlan:
    """Create, update, or nothing when production already runs the translated definition."""
    current = staging.production_definition
    return PromotionPlan(
        action=deploy_action(current, staging.translated), name=request.target_name,
        definition=staging.translated, code_url=translate_url(staging.deployment.code_url, mapping),
        role_arn=production_role(staging.role_arn, mapping),
        description=f"promotion {promotion_id} by {request.requested_by}", trigger=request.trigger,
        previous_definition_digest=digest(current) if current is not None else None)


@dataclass(frozen=True)
class RollbackPlan:
    """Publish an earlier version's definition as the newest version, or nothing when
    production already runs it."""

    action: DeployAction  # update or noop: a rollback needs a production deployment
    name: str
    version: Version
    definition: str
    role_arn: str
    description: str

    def unchanged(self) -> StepResult:
        return StepResult(Step.DEPLOY, True, f"{self.name} already runs version {self.version.number}'s definition")

    def deployed(self, version_arn: str) -> StepResult:
        return StepResult(Step.DEPLOY, True, f"published version {self.version.number}'s definition as "
                                             f"{tail(version_arn)}", changed=True)


def restore_check(version: Version) -> CheckResult:
    return CheckResult("version", True, f"restore version {version.number}")


def version_gone(version: Version) -> StepResult:
    """The version chosen was deleted between listing and reading it."""
    return StepResult(Step.READ_VERSION, False, f"version {version.number} is gone ({version.arn})")


def plan_rollback(name: str, current_definition: str, current_role_arn: str, version: Version,
                  version_definition: str, promotion_id: str, requested_by: str) -> RollbackPlan:
    """Production keeps its role; only the definition goes back."""
    return RollbackPlan(
        action=deploy_action(current_definition, version_definition), name=name, version=version,
        definition=version_definition, role_arn=current_role_arn,
        description=f"rollback {promotion_id} to version {version.number} by {requested_by}")


# ---- the audit record ----

@dataclass
class AuditRecord:
    """One attempt, as stored (Kargo's Promotion: who, what, when, from which stage to which,
    each step's result, the outcome). Written once, never rewritten."""

    promotion_id: str
    kind: str  # a Kind
    flow: str
    project: str
    requested_by: str
    reason: str
    dagster_run_id: str
    started_at: str
    dagster_user: str | None = None
    branch: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # environment, account, state machine, digest, run
    target: dict[str, Any] = field(default_factory=dict)  # environment, account, state machine, versions, digests
    code_package: dict[str, Any] = field(default_factory=dict)  # url, sha
    checks: list[CheckResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    execution_arn: str | None = None
    outcome: str = ""  # an Outcome, once concluded
    production_changed: bool = False
    finished_at: str = ""
    lint_isolation: str | None = None  # how the staging code was linted; "none" is unsafe and says so here

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (the enums as their words): stored, logged and shown as is."""
        data = {k: _plain(v) for k, v in self.__dict__.items()}
        data["checks"] = [{k: _plain(v) for k, v in c.__dict__.items()} for c in self.checks]
        data["steps"] = [{k: _plain(v) for k, v in s.__dict__.items()} for s in self.steps]
        return data


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def new_record(kind: Kind, request: PromotionRequest, *, run_id: str, started: Any, dagster_user: str | None,
               target: dict[str, Any], lint_isolation: str) -> AuditRecord:
    """An attempt's record before anything is read: who asked, for what, where to."""
    return AuditRecord(
        promotion_id=promotion_id(kind, request.flow, started, run_id), kind=kind, flow=request.flow,
        project=request.project, requested_by=request.requested_by, reason=request.reason, dagster_run_id=run_id,
        started_at=started.isoformat(), dagster_user=dagster_user, branch=request.branch, target=dict(target),
        lint_isolation=lint_isolation if kind == Kind.PROMOTION else None)


def conclude(record: AuditRecord, finished_at: str) -> None:
    """The outcome, decided from the checks and steps alone, once the attempt is over."""
    record.outcome = outcome(record.kind, record.checks, record.steps)
    record.production_changed = production_changed(record.steps)
    record.finished_at = finished_at


def promotion_id(kind: str, flow: str, started_at: Any, run_id: str) -> str:
    """Sortable by time within a flow's prefix, unique per Dagster run."""
    return f"{started_at:%Y%m%dT%H%M%SZ}-{kind}-{flow}-{run_id[:8]}"


def record_key(prefix: str, flow: str, pid: str) -> str:
    return f"{prefix}/{flow}/{pid}.json"


# ---- launching from the UI: a partition per production state machine ----

def launch_fields(kind: str, partition_key: str) -> dict[str, Any]:
    """The op config the Launchpad shows for a partition (a production state machine): flow and
    project from its name, and blanks for what only the person launching knows. A blank left as
    is fails the run as bad config, before any AWS call, so a backfill over every partition
    promotes nothing. ValueError (the UI shows it) when the key is not a production name."""
    parsed = naming.parse_state_machine_name(partition_key)
    if partition_key != str(naming.state_machine_name(parsed.project, parsed.flow, production=True)):
        raise ValueError(f"partition {partition_key!r} is not a production state machine (<project>.prod.<Flow>)")
    fields: dict[str, Any] = {"flow": parsed.flow, "project": parsed.project}
    if kind != Kind.ROLLBACK:
        fields["branch"] = ""
    if kind != "checks":
        fields.update(requested_by="", reason="")
    return fields


# ---- what on-call sees: one Slack message per attempt that changed or tried to change production ----

@dataclass(frozen=True)
class AnnouncementLinks:
    """Where an announcement points: the Dagster run, the audit record (its s3:// URL and the S3
    console), the production state machine in the Step Functions console."""

    dagster_run: str
    record_url: str
    record_console: str
    state_machine_console: str


def announcement_links(dagster_run: str, bucket: str, key: str, state_machine_arn: str) -> AnnouncementLinks:
    region = state_machine_arn.split(":")[3] if state_machine_arn.count(":") >= 6 else "us-east-1"
    console = f"https://{region}.console.aws.amazon.com"
    return AnnouncementLinks(
        dagster_run, f"s3://{bucket}/{key}", f"{console}/s3/object/{bucket}?region={region}&prefix={key}",
        f"{console}/states/home?region={region}#/statemachines/view/{state_machine_arn}")


def announcement_key(promotion_id: str) -> str:
    """The ledger key of an attempt's announcement (namespace `promotion`): one message per attempt."""
    return f"announcement/{promotion_id}"


HEADLINES = {
    Outcome.PROMOTED: (":rocket:", "promoted to production"),
    Outcome.PROMOTED_NOT_TRIGGERED: (":warning:", "promoted to production, its run not started"),
    Outcome.ROLLED_BACK: (":rewind:", "rolled back in production"),
    Outcome.BLOCKED: (":no_entry:", "promotion blocked"),
    Outcome.FAILED: (":x:", "{kind} failed, production unchanged"),
    Outcome.INCOMPLETE: (":rotating_light:", "{kind} incomplete: production changed, then a step failed"),
}
MAX_LISTED = 10  # failed checks or steps listed one by one; the rest counted
MAX_DETAIL = 400  # characters of one check's or step's detail (a lint's output is in the record)


def _version(arn: str | None) -> str:
    return tail(arn) if arn else "none"


def _results(title: str, results: list[Mapping[str, Any]]) -> list[str]:
    lines = [f"*{title}*"]
    for r in results[:MAX_LISTED]:
        detail = str(r.get("detail", ""))
        detail = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 1] + "…"
        lines.append(f"• `{escape(str(r['name']))}`: {escape(detail)}")
    if len(results) > MAX_LISTED:
        lines.append(f"…and {len(results) - MAX_LISTED} more (all in the audit record)")
    return lines


def render_announcement(record: Mapping[str, Any], links: AnnouncementLinks) -> SlackMessage | None:
    """The announcement of one audited attempt, from its record as stored; None for a no-op
    (production did not change and nothing went wrong: the record is enough, and relaunches,
    re-executions and CI retries would otherwise fill the channel). Everything from the record
    is escaped: check details carry staging code's output, reason and names are typed by people."""
    outcome_ = Outcome(record["outcome"])
    if outcome_ is Outcome.NO_OP:
        return None
    kind, flow = str(record["kind"]), str(record["flow"])
    source, target = record.get("source") or {}, record.get("target") or {}
    machine = tail(str(target.get("state_machine_arn", ""))) or flow
    icon, words = HEADLINES[outcome_]
    title = f"{flow} {words.format(kind=kind)}"
    who = str(record.get("requested_by") or "unknown")
    launcher = record.get("dagster_user")
    who_text = escape(who) + (f" (launched by {escape(str(launcher))})" if launcher and launcher != who else "")
    new, previous, restored = (target.get(k) for k in ("version_arn", "previous_version_arn", "restored_version_arn"))
    if new:
        versions = f"{_version(previous)} → {_version(new)}" + (
            f" (version {_version(restored)}'s definition)" if restored else "")
    else:  # nothing published: production stays where it was
        versions = f"{_version(previous)}, unchanged" if previous else "unchanged"
    fields = [f"*State machine*\n`{escape(machine)}`", f"*Requested by*\n{who_text}",
              f"*Version*\n{versions}", f"*Production changed*\n{'yes' if record.get('production_changed') else 'no'}"]
    if kind == Kind.PROMOTION:
        staging = tail(str(source.get("state_machine_arn", ""))) or "?"
        run = source.get("latest_run_arn")
        fields.append(f"*From staging*\n`{escape(staging)}`" + (f"\nrun `{escape(tail(str(run)))}`" if run else ""))
    if record.get("execution_arn"):
        fields.append(f"*Production run*\n`{escape(tail(str(record['execution_arn'])))}`")
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{icon} {title}"[:MAX_HEADER_CHARS]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
    ]
    reason = str(record.get("reason") or "")
    if reason:
        reason_text = f"*Reason*: {escape(reason)}"[:MAX_SECTION_CHARS]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": reason_text}})
    checks = list(record.get("checks") or [])
    failed_checks = [c for c in checks if not c.get("passed")]
    failed_steps = [s for s in record.get("steps") or [] if not s.get("passed")]
    lines: list[str] = []
    if failed_checks:
        lines += _results(f"Failed checks ({len(failed_checks)} of {len(checks)})", failed_checks)
    elif checks:
        lines.append(f"*Checks*: all {len(checks)} passed (" + ", ".join(f"`{escape(str(c['name']))}`"
                                                                        for c in checks[:MAX_LISTED]) + ")")
    if failed_steps:
        lines += _results("Failed step", failed_steps)
    for text in pack(lines)[:MAX_BLOCKS - 6]:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    buttons = [("Dagster run", links.dagster_run), ("Audit record", links.record_console),
               ("Step Functions", links.state_machine_console)]
    blocks.append({"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url[:3000]}
        for label, url in buttons]})
    context = f"{escape(kind)} `{escape(str(record['promotion_id']))}` · record `{escape(links.record_url)}`"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:3000]}]})
    failed = ", ".join(str(r["name"]) for r in failed_checks + failed_steps)
    text = escape(f"{title}: {machine} {versions}, requested by {who}." + (f" Failed: {failed}." if failed else ""))
    return SlackMessage(text=text, blocks=tuple(blocks))
