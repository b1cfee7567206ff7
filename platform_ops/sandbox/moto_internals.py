"""Everything that reaches into moto 5.2.5's private internals, in one place.

moto is the sandbox's AWS, but on the paths platform-ops uses it differs from AWS. Found in moto
5.2.5 (and on getmoto/moto main as of Aug 2026), with Docker-less Batch (batch.use_docker false)
and the real Step Functions interpreter (stepfunctions.execute_state_machine true):
- Batch: a job cannot stay RUNNABLE (batch_simple finishes it inside SubmitJob); CancelJob and
  TerminateJob never change a job's status; DescribeJobs drops container.exitCode/reason and
  ignores its 100-id limit; ListJobs without jobStatus returns every status, not RUNNING, and
  never pages; CancelJobs is not implemented; no logs are written.
- Step Functions interpreter: bug 1, `_normalise_parameters`/`_normalise_response` are empty
  stubs, so every batch:submitJob(.sync) fails with States.Runtime 'JobName'; bug 2, a failed Map
  iteration's States.* error is rejected by CustomErrorName and becomes States.Runtime; bug 3,
  callback clients sign with key 'ak' and act in the default account, not the execution's;
  bug 4, a multi-key JSONPath `$.['A', 'B']` gives a list, not an object; bug 5,
  GetExecutionHistory never pages; bug 6, ListStateMachineVersions is missing; bug 7,
  StartExecution without a name leaves the name None.
- Gap 8: no service publishes state-change events to EventBridge.
Each patch below makes it behave like the AWS API reference says. `apply()` fails loudly, naming
the internal and, for a function, the parameters it expected and found, when a moto upgrade moves
or changes something we rely on; platform_ops_tests/sandbox/test_moto_fixes.py pins that.

Only the sandbox process imports this module. Product code never does.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

MOTO_VERSION = "5.2.5"

RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED = "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"
TERMINAL = {SUCCEEDED, FAILED}
BEFORE_STARTING = {"SUBMITTED", "PENDING", RUNNABLE}


@dataclass
class Outcome:
    """What the sandbox's fake Batch scheduler does with a submitted job."""

    status: str  # RUNNABLE | SUCCEEDED | FAILED
    status_reason: str | None = None
    exit_code: int | None = None
    container_reason: str | None = None
    attempts: int = 1
    log_lines: list[str] = field(default_factory=list)
    after_seconds: float = 0  # how long the job runs before it ends this way


# Named failure modes a scenario can inject; values mirror what AWS Batch reports for each.
FAULTS: dict[str, Callable[[], Outcome]] = {
    "exit_1": lambda: Outcome(
        FAILED, "Essential container in task exited", 1, None,
        log_lines=["Traceback (most recent call last):", '  File "flow.py", line 12, in train',
                   "ValueError: training data is empty"],
    ),
    "oom": lambda: Outcome(
        FAILED, "Essential container in task exited", 137,
        "OutOfMemoryError: Container killed due to memory usage",
        log_lines=["loading features into memory", "Killed"],
    ),
    "spot": lambda: Outcome(
        FAILED, "Host EC2 (instance i-0a1b2c3d4e5f60718) terminated.", None,
        "Host EC2 (instance i-0a1b2c3d4e5f60718) terminated.",
    ),
    "timeout": lambda: Outcome(FAILED, "Job attempt duration exceeded timeout", None, None),
    "stuck": lambda: Outcome(
        RUNNABLE,
        "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested "
        "for instance type [m5.2xlarge]",
    ),
    # staging code that got hold of platform-ops' credentials (this process's) and prints them
    "leaky": lambda: Outcome(
        FAILED, "Essential container in task exited", 1, None,
        log_lines=[f"debug: SLACK_BOT_TOKEN={os.environ.get('SLACK_BOT_TOKEN', '')}",
                   f"aws_secret_access_key = {os.environ.get('AWS_SECRET_ACCESS_KEY', '')}",
                   f"key id {os.environ.get('AWS_ACCESS_KEY_ID', '')}", "ValueError: leaked on purpose"],
    ),
    "succeed": lambda: Outcome(SUCCEEDED, None, 0),
    # jobs that are simply somewhere along the way (for dashboards with every state)
    "submitted": lambda: Outcome("SUBMITTED"),
    "pending": lambda: Outcome("PENDING"),
    "starting": lambda: Outcome(STARTING),
    "running": lambda: Outcome(RUNNING),
}
IN_FLIGHT = {"SUBMITTED", "PENDING", RUNNABLE, STARTING, RUNNING}


@dataclass
class FaultRule:
    """Match submitted jobs by account and any of: job name prefix, queue name, Metaflow step,
    run id, foreach index; the first matching rule decides the job's outcome."""

    fault: str
    account: str | None = None
    name_prefix: str | None = None
    queue: str | None = None
    step: str | None = None
    run_id: str | None = None
    index: int | None = None
    remaining: int | None = None  # None: forever
    created_minutes_ago: float | None = None  # e.g. a stuck task that has waited since the weekend
    after_seconds: float = 0  # matched jobs RUN until this long after the fault was set, then end together
    armed_at: float = field(default_factory=time.monotonic)

    def matches(self, job: Any, account: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        env = _environment(job)
        checks = [
            (self.account, account),
            (self.queue, job.job_queue.name),
            (self.step, job.parameters.get("metaflow.step_name")),
            (self.run_id, job.parameters.get("metaflow.run_id")),
            (None if self.index is None else str(self.index), env.get("METAFLOW_SPLIT_INDEX")),
        ]
        if self.name_prefix is not None and not job.job_name.startswith(self.name_prefix):
            return False
        return all(want is None or want == got for want, got in checks)


class SandboxState:
    """Fault rules and bookkeeping shared by the patches; reset with moto's own reset."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []
        # accounts whose service events someone drains: moto's SQS send is O(queue length), so a
        # polled account's undrained queue would make every event slower than the last
        self.event_accounts: set[str] = set()
        # jobs running out an `after_seconds`: job id -> its timer and how it ends (time_up ends them now)
        self.timed: dict[str, tuple[threading.Timer, tuple]] = {}

    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
            timers, self.timed = [timer for timer, _ in self.timed.values()], {}
        for timer in timers:
            timer.cancel()

    def add_rule(self, rule: FaultRule) -> None:
        if rule.fault not in FAULTS:
            raise ValueError(f"unknown fault {rule.fault!r}; known: {sorted(FAULTS)}")
        with self.lock:
            self.rules.append(rule)

    def rule_for(self, job: Any, account: str) -> FaultRule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(job, account):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule
        return None


STATE = SandboxState()


def _environment(job: Any) -> dict[str, str]:
    env = (job.container_overrides or {}).get("environment") or []
    return {e.get("name"): e.get("value") for e in env if isinstance(e, dict)}


def _resource_ask(job: Any) -> tuple[float, int]:
    """vCPU and MiB the job asks for: container overrides win over the job definition."""
    vcpus = job.job_definition._get_resource_requirement("vcpus", 1)
    memory = job.job_definition._get_resource_requirement("memory", 512)
    overrides = job.container_overrides or {}
    for req in overrides.get("resourceRequirements") or []:
        if req.get("type") == "VCPU":
            vcpus = req["value"]
        elif req.get("type") == "MEMORY":
            memory = req["value"]
    vcpus = overrides.get("vcpus", vcpus)
    memory = overrides.get("memory", memory)
    return float(vcpus), int(memory)


def scheduler_verdict(job: Any) -> Outcome | None:
    """The Batch scheduler's view: a job no compute environment of its queue can place stays
    RUNNABLE with the statusReason AWS infers (MISCONFIGURATION:*)."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    vcpus, memory = _resource_ask(job)
    environments = [ce for ce in job.job_queue.environments if ce.env_type == "MANAGED"]
    if not environments:
        return None
    fits_an_instance = fits_max = False
    for ce in environments:
        resources = ce.compute_resources or {}
        if vcpus <= float(resources.get("maxvCpus", 0)):
            fits_max = True
        for name in resources.get("instanceTypes", []):
            spec = INSTANCE_TYPES.get(name)
            if spec is None:  # "optimal" or a family: assume the biggest of the family fits
                fits_an_instance = True
                continue
            if vcpus <= spec["VCpuInfo"]["DefaultVCpus"] and memory <= spec["MemoryInfo"]["SizeInMiB"]:
                fits_an_instance = True
    if not fits_an_instance:
        return Outcome(
            RUNNABLE,
            "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) "
            "is higher than that can be met by the CE(s) attached to the job queue.",
        )
    if not fits_max:
        return Outcome(
            RUNNABLE,
            "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - CE(s) associated with the job queue "
            "cannot meet the CPU requirement of the job.",
        )
    return None


def decide(job: Any, account: str) -> Outcome:
    rule = STATE.rule_for(job, account)
    if rule is not None:
        if rule.created_minutes_ago:
            job.job_created_at = datetime.now() - timedelta(minutes=rule.created_minutes_ago)
        outcome = FAULTS[rule.fault]()
        if rule.after_seconds:
            outcome.after_seconds = max(0.01, rule.armed_at + rule.after_seconds - time.monotonic())
        return outcome
    return scheduler_verdict(job) or FAULTS["succeed"]()


def _write_logs(job: Any, lines: list[str]) -> None:
    if not lines:
        return
    logs = job._log_backend
    now_ms = int(datetime.now().timestamp() * 1000)
    try:
        logs.create_log_group(job._log_group, {})
    except Exception:  # already there
        pass
    try:
        logs.create_log_stream(job._log_group, job.log_stream_name)
    except Exception:
        pass
    logs.put_log_events(
        job._log_group, job.log_stream_name,
        [{"timestamp": now_ms + i, "message": line} for i, line in enumerate(lines)],
    )


def _finish(self: Any, include_start_attempt: bool, job: Any) -> None:
    """Replacement for BatchSimpleBackend._mark_job_as_finished: asks `decide` what happens."""

    self.backend._jobs[job.job_id] = job
    outcome = decide(job, self.account_id)
    if outcome.status in IN_FLIGHT:
        job.status = outcome.status
        job.job_stopped_reason = outcome.status_reason
        if outcome.status in (STARTING, RUNNING):
            job.job_started_at = datetime.now()
            job.log_stream_name = job._stream_name
        job_state_change(job)
        if outcome.status == RUNNABLE and outcome.status_reason:  # the scheduler cannot place it
            job_queue_blocked(job)
        return
    job.job_started_at = datetime.now()
    job.log_stream_name = job._stream_name
    if outcome.after_seconds > 0:
        job.status = RUNNING
        timer = threading.Timer(outcome.after_seconds, _time_up, (job.job_id,))
        timer.daemon = True
        with STATE.lock:
            STATE.timed[job.job_id] = (timer, (self, include_start_attempt, job, outcome))
        timer.start()
        return
    _complete(self, include_start_attempt, job, outcome)


def _time_up(job_id: str) -> bool:
    """End a job whose `after_seconds` is up, once, whether its timer or `time_up` gets here first."""
    with STATE.lock:
        entry = STATE.timed.pop(job_id, None)
    if entry is None:
        return False
    timer, args = entry
    timer.cancel()
    _complete(*args)
    return True


def time_up(job_ids: list[str] | None = None) -> list[str]:
    """End now the jobs still running out their `after_seconds` (all, or those named), as their
    fault says: a test waits for this call, not for a clock. Returns the ids it ended."""
    with STATE.lock:
        pending = sorted(STATE.timed) if job_ids is None else [j for j in job_ids if j in STATE.timed]
    return [job_id for job_id in pending if _time_up(job_id)]


def _complete(self: Any, include_start_attempt: bool, job: Any, outcome: Outcome) -> None:
    if job.job_stopped:  # terminated meanwhile
        return
    for _ in range(max(1, outcome.attempts)):
        if include_start_attempt:
            job._start_attempt()
            container = job.latest_attempt["container"]
            if outcome.exit_code is not None:
                container["exitCode"] = outcome.exit_code
            if outcome.container_reason:
                container["reason"] = outcome.container_reason
            if outcome.status_reason:
                job.latest_attempt["statusReason"] = outcome.status_reason
            job.latest_attempt["stoppedAt"] = int(datetime.now().timestamp() * 1000)
    job.exit_code = outcome.exit_code
    if outcome.status == FAILED:
        job.job_stopped_reason = outcome.status_reason
    job._sandbox_container_reason = outcome.container_reason
    _write_logs(job, outcome.log_lines)
    if outcome.status == SUCCEEDED:
        _record_foreach(job, self.account_id, self.region_name)
    job._mark_stopped(success=outcome.status == SUCCEEDED)


def _record_foreach(job: Any, account: str, region: str) -> None:
    """Play a Metaflow start step's part in a foreach: write the split's cardinality where the
    state machine's `#<step>` DynamoDB getItem reads it (width from the run's parameters)."""
    env = _environment(job)
    table, params = env.get("METAFLOW_SFN_DYNAMO_DB_TABLE"), env.get("METAFLOW_PARAMETERS")
    if not table or params is None:
        return
    from moto.dynamodb.models import dynamodb_backends

    try:
        width = int(json.loads(params or "{}").get("width", 3))
    except (ValueError, AttributeError):
        width = 3
    dynamodb_backends[account][region].put_item(table, {
        "pathspec": {"S": job.job_id},
        "for_each_cardinality": {"NS": [str(i) for i in range(max(1, width))]},
    })


def _terminate(original: Callable[..., None]) -> Callable[..., None]:
    """AWS: a cancelled/terminated job becomes FAILED with statusReason and stoppedAt."""

    def terminate(self: Any, reason: str) -> None:
        original(self, reason)
        if not self.is_alive() and self.status not in TERMINAL:
            self.job_stopped_reason = reason
            self._sandbox_cancelled = self.status in BEFORE_STARTING
            self._mark_stopped(success=False)

    return terminate


def _describe(original: Callable[..., dict]) -> Callable[..., dict]:
    """AWS returns container.exitCode/reason and isCancelled/isTerminated; moto drops them."""

    def describe(self: Any) -> dict:
        result = original(self)
        container = result.get("container")
        if isinstance(container, dict):
            if self.exit_code is not None:
                container["exitCode"] = self.exit_code
            reason = getattr(self, "_sandbox_container_reason", None)
            if reason:
                container["reason"] = reason
        if self.job_stopped and self.status == FAILED and self.stop:
            cancelled = getattr(self, "_sandbox_cancelled", False)
            result["isCancelled"] = cancelled
            result["isTerminated"] = not cancelled
        return result

    return describe


def _describe_jobs(self: Any, jobs: list[str] | None) -> list[dict]:
    """AWS: at most 100 ids a call, looked up directly (moto scans every job for each call)."""
    from moto.batch.exceptions import ClientException

    ids = list(jobs or [])
    if len(ids) > 100:
        raise ClientException("Maximum number of jobs supported is 100")
    by_arn = None
    found = []
    for ident in ids:
        job = self._jobs.get(ident)
        if job is None and ident.startswith("arn:"):
            by_arn = by_arn or {j.arn: j for j in self._jobs.values()}
            job = by_arn.get(ident)
        if job is not None:
            found.append(job.describe())
    return found


def _offset_page(items: list, size: int, token: str | None, result_key: str) -> dict[str, Any]:
    """One page of `items` the way AWS pages (an opaque nextToken; here, the next offset)."""
    try:
        start = int(token) if token else 0
    except ValueError:
        raise ValueError(f"Invalid nextToken {token!r}") from None
    result: dict[str, Any] = {result_key: items[start:start + size]}
    if start + size < len(items):
        result["nextToken"] = str(start + size)
    return result


def _list_jobs_response(self: Any) -> str:
    """AWS ListJobs: jobStatus omitted means RUNNING; maxResults/nextToken paginate
    (1000 a page with jobStatus, 100 with filters)."""
    from moto.batch.exceptions import ClientException

    job_status = self._get_param("jobStatus")
    filters = self._get_param("filters")
    if job_status is None and filters is None:
        job_status = RUNNING
    jobs = self.batch_backend.list_jobs(
        job_queue_name=self._get_param("jobQueue"),
        array_job_id=self._get_param("arrayJobId"),
        job_status=job_status,
        filters=filters,
    )
    cap = 100 if filters else 1000
    page_size = min(int(self._get_param("maxResults") or cap), cap)
    try:
        result = _offset_page(jobs, page_size, self._get_param("nextToken"), "jobSummaryList")
    except ValueError as exc:
        raise ClientException(str(exc)) from None
    result["jobSummaryList"] = [job.describe_short() for job in result["jobSummaryList"]]
    return json.dumps(result)


def _cancel_jobs_response(self: Any) -> str:
    """CancelJobs (botocore 1.44+, absent from moto 5.2.5): up to 50 ids and one reason; per-job
    successful/errors; unknown ids count as successful; STARTING/RUNNING jobs are left alone."""
    from moto.batch.exceptions import ClientException

    ids = self._get_param("jobs") or []
    reason = self._get_param("reason") or ""
    if not ids:
        raise ClientException("'jobs' is a required field and must contain at least 1 job ID")
    if len(ids) > 50:
        raise ClientException("Maximum number of jobs supported is 50")
    if not reason:
        raise ClientException("'reason' is a required field (cannot be an empty string)")
    successful, errors = [], []
    for job_id in ids:
        try:
            self.batch_backend.cancel_job(job_id, reason)
            successful.append(job_id)
        except ClientException as exc:
            errors.append({"job": job_id, "code": "ClientException", "message": str(exc)})
    return json.dumps({"successful": successful, "errors": errors})


# The parameters (inspect.signature, in order) of every moto function the patches wrap, replace or
# call, as moto 5.2.5 has them; keyed by owner (class, or module's last name) and attribute.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "Job.terminate": ("self", "reason"),
    "Job.describe": ("self",),
    "Job._mark_stopped": ("self", "success"),
    "Job._start_attempt": ("self",),
    "Job.describe_short": ("self",),
    "BatchBackend.describe_jobs": ("self", "jobs"),
    "BatchBackend.list_jobs": ("self", "job_queue_name", "array_job_id", "job_status", "filters"),
    "BatchBackend.cancel_job": ("self", "job_id", "reason"),
    "BatchResponse.listjobs": ("self",),
    "BatchSimpleBackend._mark_job_as_finished": ("self", "include_start_attempt", "job"),
    "StateTaskServiceBatch._to_boto_request": ("self", "parameters", "structure_shape"),
    "StateTaskServiceBatch._from_boto_response": ("self", "response", "structure_shape"),
    "StateTaskServiceBatch._eval_service_task": (
        "self", "env", "resource_runtime_part", "normalised_parameters", "state_credentials"),
    "StateTaskServiceBatch._build_sync_resolver": (
        "self", "env", "resource_runtime_part", "normalised_parameters", "state_credentials"),
    "StateTaskServiceBatch._get_boto_service_name": ("self", "boto_service_name"),
    "StateTaskServiceBatch._get_boto_service_action": ("self", "service_action_name"),
    "StateTaskServiceBatch._normalise_parameters": ("self", "parameters", "boto_service_name", "service_action_name"),
    "StateTaskServiceBatch._normalise_response": ("self", "response", "boto_service_name", "service_action_name"),
    "StateTaskServiceDynamoDB._eval_service_task": (
        "self", "env", "resource_runtime_part", "normalised_parameters", "state_credentials"),
    "ErrorName.__init__": ("self", "error_name"),
    "StepFunctionResponse.get_execution_history": ("self",),
    "BaseExecutionWorkerCommunication.terminated": ("self",),
    "StepFunctionsParserBackend.start_execution": ("self", "state_machine_arn", "name", "execution_input",
                                                   "trace_header"),
    "json_path.extract_json": ("path", "data"),
    "string_expression.extract_json": ("path", "data"),
    "state_task_service_batch.boto_client_for": ("region", "service", "state_credentials"),
    "state_task_service_dynamodb.boto_client_for": ("region", "service", "state_credentials"),
    "ext.parse": ("path", "debug"),
}


def _require(obj: Any, name: str) -> Any:
    """`obj.name`, checked to exist and, for the functions in SIGNATURES, to take the parameters
    moto 5.2.5's did: a patch around a function whose arguments changed would pass the wrong ones."""
    owner = getattr(obj, "__name__", type(obj).__name__)
    where = f"{getattr(obj, '__module__', None) or owner}.{owner}" if inspect.isclass(obj) else owner
    if not hasattr(obj, name):
        raise RuntimeError(f"moto internals moved: {where} has no {name!r}; "
                           f"the sandbox is written against moto {MOTO_VERSION}")
    found = getattr(obj, name)
    expected = SIGNATURES.get(f"{owner.rpartition('.')[2]}.{name}")
    if expected is not None:
        try:
            params = tuple(inspect.signature(found).parameters)
        except (TypeError, ValueError):
            params = None
        if params != expected:
            shown = "no signature" if params is None else f"({', '.join(params)})"
            raise RuntimeError(f"moto internals changed: {where}.{name} takes {shown}; the sandbox is "
                               f"written against moto {MOTO_VERSION}'s ({', '.join(expected)})")
    return found


# ---- Step Functions interpreter (moto's ASL parser, ported from LocalStack) ----

_execution_account = threading.local()


def _operation_model(service: str, action: str) -> Any:
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    for name in model.operation_names:
        if xform_name(name) == action:
            return model.operation_model(name)
    raise RuntimeError(f"no {service} operation {action!r} in botocore's model")


def _normalise_parameters(self: Any, parameters: dict, boto_service_name: str | None = None,
                          service_action_name: str | None = None) -> None:
    """Bug 1: SFN passes PascalCase keys (JobName, ...) to boto3. AWS maps them onto the API's
    own shape; so does this, with the parser's existing `_to_boto_request`."""
    op = _operation_model(self._get_boto_service_name(boto_service_name),
                          self._get_boto_service_action(service_action_name))
    self._to_boto_request(parameters, op.input_shape)


def _normalise_response(self: Any, response: Any, boto_service_name: str | None = None,
                        service_action_name: str | None = None) -> None:
    op = _operation_model(self._get_boto_service_name(boto_service_name),
                          self._get_boto_service_action(service_action_name))
    self._from_boto_response(response, op.output_shape)


def _in_execution_account(method: Callable[..., Any]) -> Callable[..., Any]:
    """Bug 3: remember which account the execution runs in while a task builds its clients."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        part = kwargs.get("resource_runtime_part") or next(
            (a for a in args if hasattr(a, "account") and hasattr(a, "region")), None)
        previous = getattr(_execution_account, "account", None)
        _execution_account.account = getattr(part, "account", None)
        try:
            return method(self, *args, **kwargs)
        finally:
            _execution_account.account = previous

    return wrapper


def _account_aware(boto_client_for: Callable[..., Any]) -> Callable[..., Any]:
    """Bug 3: moto's callback clients sign with key 'ak', i.e. the default account; AWS calls
    the integrated service in the state machine's own account."""

    def client_for(*args: Any, **kwargs: Any) -> Any:
        client = boto_client_for(*args, **kwargs)
        account = getattr(_execution_account, "account", None)
        if account:
            def add_header(request: Any, **_: Any) -> None:
                request.headers["x-moto-account-id"] = account

            client.meta.events.register("before-sign", add_header)
        return client

    return client_for


_MULTI_KEY = re.compile(r"^(?P<parent>.*?)\.?\[\s*(?P<keys>'[^']*'(?:\s*,\s*'[^']*')+)\s*\]$")


def _multi_key_aware(extract_json: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """Bug 4: AWS's JSONPath (Jayway) reads `$.['JobId', 'Parameters']` as an object with those
    keys; moto returns a list of the values. Metaflow's every task has such an OutputPath."""

    def extract(path: str, data: Any) -> Any:
        match = _MULTI_KEY.match(path.strip())
        if not match:
            return extract_json(path, data)
        parent = extract_json(match["parent"] or "$", data)
        keys = [k.strip().strip("'") for k in match["keys"].split(",")]
        return {k: parent[k] for k in keys if isinstance(parent, dict) and k in parent}

    return extract


def _paged_history(self: Any) -> Any:
    """Bug 5: GetExecutionHistory pages (maxResults default 100, at most 1000; nextToken;
    reverseOrder) on AWS; moto returns every event at once."""
    from moto.core.responses import ActionResult
    from moto.stepfunctions.exceptions import ValidationException

    events = list(self.stepfunction_backend.get_execution_history(self._get_param("executionArn"))["events"])
    if self._get_param("reverseOrder"):
        events.reverse()
    size = int(self._get_param("maxResults") or 100)
    if not 1 <= size <= 1000:
        raise ValidationException(f"maxResults must be between 1 and 1000, got {size}")
    return ActionResult(_offset_page(events, size, self._get_param("nextToken"), "events"))


def _list_state_machine_versions(self: Any) -> Any:
    """Bug 6: ListStateMachineVersions (newest first, maxResults/nextToken) is missing from moto,
    though it keeps the versions `publish=True` creates; promotion's rollback needs the list."""
    from moto.core.responses import ActionResult

    machine = self.stepfunction_backend.describe_state_machine(self._get_param("stateMachineArn"))
    versions = sorted(getattr(machine, "versions", {}).values(), key=lambda v: v.version, reverse=True)
    listed = [{"stateMachineVersionArn": v.arn, "creationDate": v.creation_date} for v in versions]
    return ActionResult(_offset_page(listed, int(self._get_param("maxResults") or 100),
                                     self._get_param("nextToken"), "stateMachineVersions"))


def _named_execution(original: Callable[..., Any]) -> Callable[..., Any]:
    """Bug 7: StartExecution without a name (how `step-functions trigger` starts every run)
    gets a UUID name on AWS; moto's interpreter keeps None, so the ARN ends in ':None' and
    `$$.Execution.Name` (Metaflow's run id) is null."""
    import uuid

    def start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        return original(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    return start_execution


def _apply_stepfunctions() -> None:
    from moto.core import config as core_config
    from moto.stepfunctions.parser import models as parser_models
    from moto.stepfunctions.parser.asl.component.common.error_name import error_name as error_name_mod
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import iteration_worker
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_batch as batch_mod,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_dynamodb as dynamodb_mod,
    )

    batch_cls = _require(batch_mod, "StateTaskServiceBatch")
    dynamodb_cls = _require(dynamodb_mod, "StateTaskServiceDynamoDB")
    for name in ("_to_boto_request", "_from_boto_response", "_eval_service_task", "_build_sync_resolver",
                 "_get_boto_service_name", "_get_boto_service_action", "_normalise_parameters", "_normalise_response"):
        _require(batch_cls, name)
    _require(dynamodb_cls, "_eval_service_task")
    _require(iteration_worker, "CustomErrorName")
    error_name_cls = _require(error_name_mod, "ErrorName")
    _require(error_name_cls, "__init__")

    from moto.stepfunctions import responses as sfn_responses

    sfn_response_cls = _require(sfn_responses, "StepFunctionResponse")
    _require(sfn_response_cls, "get_execution_history")
    core_config.default_user_config["stepfunctions"] = {"execute_state_machine": True}
    sfn_response_cls.get_execution_history = _paged_history
    sfn_response_cls.list_state_machine_versions = _list_state_machine_versions
    from moto.stepfunctions.parser.backend import execution as execution_mod

    communication = _require(execution_mod, "BaseExecutionWorkerCommunication")
    communication.terminated = _execution_events(_require(communication, "terminated"))
    parser_backend = _require(parser_models, "StepFunctionsParserBackend")
    parser_backend.start_execution = _named_execution(_require(parser_backend, "start_execution"))
    batch_cls._normalise_parameters = _normalise_parameters
    batch_cls._normalise_response = _normalise_response

    class IterationErrorName(error_name_cls):
        """Bug 2: a failed Map iteration re-raises its own error (e.g. States.TaskFailed);
        CustomErrorName rejects every 'States.' name and turns it into States.Runtime."""

    iteration_worker.CustomErrorName = IterationErrorName
    from moto.stepfunctions.parser.asl.component.common.string import string_expression
    from moto.stepfunctions.parser.asl.utils import json_path

    original_extract = _require(json_path, "extract_json")
    _require(string_expression, "extract_json")
    json_path.extract_json = string_expression.extract_json = _multi_key_aware(original_extract)
    for cls in (batch_cls, dynamodb_cls):
        cls._eval_service_task = _in_execution_account(cls._eval_service_task)
    batch_cls._build_sync_resolver = _in_execution_account(batch_cls._build_sync_resolver)
    for mod in (batch_mod, dynamodb_mod):
        mod.boto_client_for = _account_aware(_require(mod, "boto_client_for"))


def put_service_event(account: str, region: str, source: str, detail_type: str, detail: dict,
                      resources: list[str], at: datetime | None = None) -> None:
    """What AWS services do and moto's do not (gap 8): publish their state changes on the
    account's default event bus, where EventBridge rules route them (to SQS here)."""
    from moto.events.models import events_backends

    if account not in STATE.event_accounts:
        return
    entry = {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail, default=str),
             "Resources": resources, "EventBusName": "default"}
    if at is not None:
        entry["Time"] = at.timestamp()
    events_backends[account][region].put_events([entry])


def _ms(value: Any) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None


def _execution_events(original: Callable[..., None]) -> Callable[..., None]:
    """Gap 8, Step Functions: "Step Functions Execution Status Change" when an execution stops."""

    def terminated(self: Any) -> None:
        original(self)
        ex = self.execution
        if getattr(ex, "_sandbox_wiped", False):
            return  # stopped by a reset: its world is gone, the next one never heard of it
        machine = ex.exec_arn.replace(":execution:", ":stateMachine:").rsplit(":", 1)[0]
        put_service_event(ex.account_id, ex.region_name, "aws.states", "Step Functions Execution Status Change", {
            "executionArn": ex.exec_arn, "stateMachineArn": machine, "name": ex.name,
            "status": ex.exec_status.value, "startDate": _ms(ex.start_date), "stopDate": _ms(ex.stop_date),
            "error": getattr(ex, "error", None), "cause": getattr(ex, "cause", None),
        }, [ex.exec_arn])

    return terminated


def stop_executions(timeout: float = 120.0) -> int:
    """Stop every running execution, before a reset wipes the world it runs in, and wait until
    each has ended (a deadline for a very busy machine). moto's reset keeps the interpreter's
    threads: a run it cut short went on polling Batch for a job that no longer existed, and when
    that poll failed (e.g. throttled: the callback client never retries) it "failed" into the
    next world, whose event queue announced an execution nobody could describe. Returns how many."""
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    running = [ex for regions in list(stepfunctions_parser_backends.values()) for backend in list(regions.values())
               for machine in list(backend.state_machines) for ex in list(getattr(machine, "executions", []))
               if ex.exec_status == ExecutionStatus.RUNNING]
    deadline = time.monotonic() + timeout
    for ex in running:
        ex._sandbox_wiped = True
        while ex.exec_worker is None or ex.exec_worker.env is None:  # just started: its thread builds the env
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ex.exec_arn} never started its interpreter")
            time.sleep(0.01)
        ex.stop(stop_date=datetime.now(UTC), error="Sandbox.Reset", cause="the sandbox was reset")
    while any(ex.exec_status == ExecutionStatus.RUNNING for ex in running):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(ex.exec_status == ExecutionStatus.RUNNING for ex in running)} executions "
                               f"still running {timeout:.0f} s after they were stopped")
        time.sleep(0.05)
    return len(running)


def job_state_change(job: Any, at: datetime | None = None) -> None:
    """Gap 8, Batch: "Batch Job State Change" for the job's current status, at `at` (local time,
    as moto keeps it; default now)."""
    _, _, _, region, account, _ = job.arn.split(":", 5)
    put_service_event(account, region, "aws.batch", "Batch Job State Change", {
        "jobArn": job.arn, "jobName": job.job_name, "jobId": job.job_id, "jobQueue": job.job_queue.arn,
        "status": job.status, "statusReason": job.job_stopped_reason or "",
        "createdAt": _ms(job.job_created_at),
    }, [job.arn], at)


def job_queue_blocked(job: Any, at: datetime | None = None) -> None:
    """Gap 8, Batch: "Batch Job Queue Blocked" when a RUNNABLE job blocks its queue, with the
    reason the scheduler infers. Its detail "resembles the JobDetail object" of DescribeJobs (AWS
    Batch User Guide, "Job queue blocked events"); these are the fields of that example the
    product reads, the reason being the job's statusReason."""
    _, _, _, region, account, _ = job.arn.split(":", 5)
    put_service_event(account, region, "aws.batch", "Batch Job Queue Blocked", {
        "jobArn": job.arn, "jobName": job.job_name, "jobId": job.job_id, "jobQueue": job.job_queue.arn,
        "status": job.status, "statusReason": job.job_stopped_reason or "",
        "createdAt": _ms(job.job_created_at),
    }, [job.arn, job.job_queue.arn], at)


def _job_events(original: Callable[..., None]) -> Callable[..., None]:
    """Gap 8, Batch: a state change event when a job stops (SUCCEEDED or FAILED, cancels too)."""

    def mark_stopped(self: Any, success: bool = True) -> None:
        already = self.job_stopped
        original(self, success=success)
        if not already:
            job_state_change(self)

    return mark_stopped


_applied = False


def apply() -> None:
    """Install every patch (idempotent). Raises RuntimeError naming what moved."""
    global _applied
    if _applied:
        return
    import moto
    from moto.batch import models as batch_models
    from moto.batch import responses as batch_responses
    from moto.batch import urls as batch_urls
    from moto.batch_simple import models as simple_models
    from moto.core import config as core_config

    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"the sandbox is written against moto {MOTO_VERSION}, found {moto.__version__}")
    job_cls = _require(batch_models, "Job")
    backend_cls = _require(batch_models, "BatchBackend")
    response_cls = _require(batch_responses, "BatchResponse")
    simple_cls = _require(simple_models, "BatchSimpleBackend")
    for name in ("terminate", "describe", "_mark_stopped", "_start_attempt", "describe_short"):
        _require(job_cls, name)
    for name in ("describe_jobs", "list_jobs", "cancel_job"):
        _require(backend_cls, name)
    _require(response_cls, "listjobs")
    _require(simple_cls, "_mark_job_as_finished")
    url_paths = _require(batch_urls, "url_paths")
    base = next(p for p in url_paths if p.endswith("/v1/canceljob")).removesuffix("/v1/canceljob")

    core_config.default_user_config["batch"] = {"use_docker": False}
    simple_cls._mark_job_as_finished = _finish
    job_cls.terminate = _terminate(job_cls.terminate)
    job_cls._mark_stopped = _job_events(job_cls._mark_stopped)
    job_cls.describe = _describe(job_cls.describe)
    backend_cls.describe_jobs = _describe_jobs
    response_cls.listjobs = _list_jobs_response
    response_cls.canceljobs = _cancel_jobs_response
    url_paths[base + "/v1/canceljobs$"] = response_cls.dispatch
    _apply_stepfunctions()
    _memoize_jsonpath()
    _applied = True


def _memoize_jsonpath() -> None:
    """moto builds a JSONPath parser (yacc tables and all, ~2 ms) for every path of every event
    it routes to SQS; the parsed paths are immutable, so one per distinct path is enough."""
    import functools

    from jsonpath_ng import ext

    ext.parse = functools.lru_cache(maxsize=1024)(_require(ext, "parse"))


def set_default_account(account_id: str) -> None:
    """Requests signed with keys moto never issued belong to `account_id` (moto: 123456789012)."""
    from moto.iam import models as iam_models

    _require(iam_models, "DEFAULT_ACCOUNT_ID")
    iam_models.DEFAULT_ACCOUNT_ID = account_id


def batch_backend(account: str, region: str) -> Any:
    from moto.batch_simple.models import batch_simple_backends

    return batch_simple_backends[account][region]


def backdate_jobs(account: str, region: str, job_ids: list[str], minutes: float) -> int:
    """Move createdAt back (moto stores naive local datetimes)."""
    jobs = batch_backend(account, region).backend._jobs
    moved = 0
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is not None:
            job.job_created_at = datetime.now() - timedelta(minutes=minutes)
            moved += 1
            if job.status == RUNNABLE:  # as if it had been submitted then: RUNNABLE since then
                job_state_change(job, job.job_created_at)
    return moved


def set_job_times(account: str, region: str, job_ids: list[str], started_minutes_ago: float,
                  ran_minutes: float | None = None) -> int:
    """Move jobs' startedAt back, as if they had been placed then, and a finished job's stoppedAt
    to `ran_minutes` after it (createdAt stays before the start): a test or scenario shapes how
    long a job ran, or has been running, instead of waiting for it. Returns how many it moved."""
    jobs = batch_backend(account, region).backend._jobs
    started = datetime.now() - timedelta(minutes=started_minutes_ago)
    moved = 0
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is None:
            continue
        job.job_started_at = started
        job.job_created_at = min(job.job_created_at, started - timedelta(minutes=1))
        if job.job_stopped and ran_minutes is not None:
            job.job_stopped_at = started + timedelta(minutes=ran_minutes)
        for attempt in job.attempts[-1:]:  # the attempt that ran agrees with the job
            attempt["startedAt"] = int(started.timestamp() * 1000)
            if "stoppedAt" in attempt and ran_minutes is not None:
                attempt["stoppedAt"] = int(job.job_stopped_at.timestamp() * 1000)
        moved += 1
    return moved


def set_execution_times(account: str, region: str, execution_arn: str, started_minutes_ago: float,
                        ran_minutes: float | None = None) -> None:
    """Move an execution's startDate back, and a stopped one's stopDate to `ran_minutes` after it
    (ListExecutions and DescribeExecution report both): a run that took or has taken that long."""
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    execution = stepfunctions_parser_backends[account][region].describe_execution(execution_arn)
    execution.start_date = datetime.now(UTC) - timedelta(minutes=started_minutes_ago)
    if ran_minutes is not None and execution.stop_date is not None:
        execution.stop_date = execution.start_date + timedelta(minutes=ran_minutes)


def set_job_status(account: str, region: str, job_id: str, status: str,
                   attempt_stopped_minutes_ago: float | None = None) -> None:
    """Move a job the way the real scheduler would: placed (STARTING/RUNNING), or back to
    RUNNABLE after a failed attempt that stopped `attempt_stopped_minutes_ago` (a Batch retry)."""
    job = batch_backend(account, region).backend._jobs[job_id]
    if attempt_stopped_minutes_ago is not None:
        stopped = datetime.now() - timedelta(minutes=attempt_stopped_minutes_ago)
        ms = int(stopped.timestamp() * 1000)
        job.attempts.append({
            "container": {"exitCode": 1, "logStreamName": job._stream_name, "networkInterfaces": []},
            "startedAt": ms - 60_000, "stoppedAt": ms, "statusReason": "Essential container in task exited",
        })
        job.status = RUNNING  # the attempt's own transition, as Batch announced it then
        job_state_change(job, stopped - timedelta(minutes=1))
    job.status = status
    if status in (STARTING, RUNNING):
        job.job_stopped_reason = None
        job.job_started_at = datetime.now()
    retried = status == RUNNABLE and attempt_stopped_minutes_ago is not None
    job_state_change(job, stopped if retried else None)
