"""Scenarios: incidents as data (YAML), replayed into the sandbox round after round.

A scenario lists events; each round, every event due (`every` N rounds, or `once`) installs its
faults and submits its jobs. Users copy a scenario file to rehearse their own incidents:

    name: weekend-stuck-jobs
    interval_seconds: 45
    events:
      - name: oversized training step, stuck since Friday
        environment: staging
        queue: ml-staging
        every: 4
        jobs: {count: 3, name: "SFN-TrainFlow--train--", vcpus: 96, created_minutes_ago: 150}
      - name: one task runs out of memory
        environment: production
        queue: ml-production
        faults: [{fault: oom, remaining: 1}]
        jobs: {count: 1}
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from platform_ops.sandbox import moto_internals

SCENARIOS = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    pass


Int = Annotated[int, Strict()]
Count = Annotated[int, Strict(), Field(ge=0)]
Number = Annotated[float, Strict(), Field(ge=0)]
Text = Annotated[str, Strict()]


class _Part(BaseModel):
    """A scenario's parts: unknown keys are typos, and nothing changes once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The keys the file set, as keyword arguments: the sandbox's own defaults fill the rest."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class Fault(_Part):
    """A moto_internals.FaultRule without its account (the event's environment decides it)."""

    fault: Text
    name_prefix: Text | None = None
    step: Text | None = None
    run_id: Text | None = None
    index: Count | None = None
    remaining: Count | None = None  # None: forever
    created_minutes_ago: Number | None = None
    after_seconds: Number | None = None

    @field_validator("fault")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in moto_internals.FAULTS:
            raise ValueError(f"expected one of {', '.join(sorted(moto_internals.FAULTS))}, got {v!r}")
        return v


class Jobs(_Part):
    """Batch jobs to submit: the sandbox's submit_jobs keys (unset: its defaults, e.g. 1 job)."""

    count: Count | None = None
    name: Text | None = None  # `{i}` is the job's number
    vcpus: Annotated[int, Strict(), Field(ge=1)] | None = None
    memory: Annotated[int, Strict(), Field(ge=1)] | None = None
    created_minutes_ago: Number | None = None
    started_minutes_ago: Number | None = None  # placed that long ago (a long run, or a run's history)
    ran_minutes: Number | None = None  # and, once finished, ran this long
    tags: dict[Text, Text] | None = None
    parameters: dict[Text, Text] | None = None
    job_definition: Text | None = None


class Flow(_Part):
    """A Metaflow run; its faults apply to this run only."""

    width: Annotated[int, Strict(), Field(ge=1)] = 3
    faults: tuple[Fault, ...] = ()


class Instances(_Part):
    """The compute environment scales."""

    # aliased: `register` would shadow BaseModel's ABC method
    register_count: Count = Field(0, alias="register")
    deregister_count: Count = Field(0, alias="deregister")


class Event(_Part):
    name: Text
    environment: Text
    queue: Text = ""  # required when the event submits jobs or installs faults
    jobs: Jobs | None = None
    faults: tuple[Fault, ...] = ()
    flow: Flow | None = None
    instances: Instances | None = None
    aws_fault: dict[str, Any] | None = None  # armed as POST /_sandbox/aws-faults would (aws_faults.py)
    every: Annotated[int, Strict(), Field(ge=1)] = 1
    after: Annotated[int, Strict(), Field(ge=0)] = 0  # rounds before the first time it is due
    once: Annotated[bool, Strict()] = False

    @model_validator(mode="after")
    def _queue_for_jobs(self) -> Event:
        if not self.queue and (self.jobs is not None or self.faults):
            raise ValueError("queue: required key is missing (jobs and faults go to a queue)")
        return self

    def due(self, round_no: int) -> bool:
        if round_no < self.after:
            return False
        since = round_no - self.after
        return since == 0 if self.once else since % self.every == 0


class Scenario(_Part):
    name: Text  # parse_scenario: the file's path when the file names none
    interval_seconds: Number = 45.0
    events: tuple[Event, ...]

    @model_validator(mode="before")
    @classmethod
    def _event_names(cls, data: Any) -> Any:
        """An unnamed event is called after its position."""
        if isinstance(data, dict) and isinstance(data.get("events"), list):
            events = [{"name": f"event {i}", **e} if isinstance(e, dict) else e for i, e in enumerate(data["events"])]
            data = {**data, "events": events}
        return data


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    """A scenario from its parsed YAML; each problem is `source: key: what is wrong`."""
    if isinstance(data, dict):
        data = {"name": source, **data}
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError("\n".join(f"{source}: {_message(e)}" for e in exc.errors())) from None


def _message(error: dict) -> str:
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    kind, msg = error["type"], error["msg"].removeprefix("Value error, ")
    if kind == "missing":
        msg = "required key is missing"
    elif kind == "extra_forbidden":
        msg = "unknown key"
    elif kind in ("model_type", "dict_type"):
        msg = "expected a mapping"
    elif kind != "value_error":
        msg = f"{msg[0].lower()}{msg[1:]}, got {error['input']!r}"
    if kind == "value_error" and (rule := re.match(r"^(\w+): (.*)$", msg)):  # a model's rule names its key
        key, msg = f"{key}.{rule[1]}" if key else rule[1], rule[2]
    return f"{key or 'scenario'}: {msg}"


def load_scenario(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if not path.exists():
        path = SCENARIOS / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(p.stem for p in SCENARIOS.glob("*.yaml"))
        raise ScenarioError(f"no scenario {name_or_path!r} (a file path, or one of: {known})")
    return parse_scenario(yaml.safe_load(path.read_text()), str(path))


def play_round(sandbox: Any, scenario: Scenario, round_no: int) -> dict[str, int]:
    """Apply every event due this round; returns what each event did (jobs submitted, or the
    Metaflow run started)."""
    from platform_ops.sandbox import flows, world

    done: dict[str, Any] = {}
    for event in scenario.events:
        if not event.due(round_no):
            continue
        account, _ = sandbox.account_of(event.environment)
        if event.aws_fault is not None:
            sandbox.aws_faults.arm(dict(event.aws_fault))
            done[event.name] = f"AWS fault {event.aws_fault.get('kind')}"
        for fault in event.faults:
            moto_internals.STATE.add_rule(moto_internals.FaultRule(account=account, queue=event.queue or None,
                                                                   **fault.given()))
        if event.jobs is not None:
            done[event.name] = len(sandbox.submit_jobs({"environment": event.environment, "queue": event.queue,
                                                        **event.jobs.given()}))
        if event.flow is not None:
            run_id = f"{scenario.name}-{round_no}-{uuid.uuid4().hex[:8]}"
            for fault in event.flow.faults:
                moto_internals.STATE.add_rule(moto_internals.FaultRule(account=account, run_id=run_id,
                                                                       **fault.given()))
            env = sandbox.settings.environments[event.environment]
            flows.trigger(sandbox.endpoint, env, width=event.flow.width, name=run_id)
            done[event.name] = f"run sfn-{run_id}"
        if event.instances is not None:
            env = sandbox.settings.environments[event.environment]
            up = world.register_instances(sandbox.endpoint, env, event.instances.register_count)
            down = world.deregister_instances(sandbox.endpoint, env, event.instances.deregister_count)
            done[event.name] = f"+{up}/-{down} instances"
    return done


def wait_until_quiet(sandbox: Any, timeout: float = 300.0) -> int:
    """Wait until the Metaflow runs have done all they will do on their own: every execution
    still RUNNING waits on Batch jobs that cannot start (RUNNABLE), with every other task's end
    already in its history. A condition on the history and Batch's records, not a quiet spell,
    so a slow machine only makes it later. Returns how many executions are still RUNNING;
    raises TimeoutError naming them after `timeout` s (a deadline for a very busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        busy, blocked = _executions_in_flight(sandbox)
        if not busy:
            return blocked
        if time.monotonic() > deadline:
            raise TimeoutError(f"still making progress after {timeout:.0f} s: {', '.join(sorted(busy))}")
        time.sleep(0.3)


def _executions_in_flight(sandbox: Any) -> tuple[list[str], int]:
    """(names of RUNNING executions that will still move on their own, how many are blocked)."""
    from platform_ops.sandbox.world import account_client

    busy, blocked = [], 0
    for env in sandbox.settings.environments.values():
        sfn = account_client(sandbox.endpoint, "stepfunctions", env.account_id, env.region)
        batch = account_client(sandbox.endpoint, "batch", env.account_id, env.region)
        for machine in sfn.list_state_machines()["stateMachines"]:
            for ex in sfn.list_executions(stateMachineArn=machine["stateMachineArn"],
                                          statusFilter="RUNNING")["executions"]:
                if _blocked(sfn, batch, ex["executionArn"]):
                    blocked += 1
                else:
                    busy.append(ex["name"])
    return busy, blocked


TASK_ENDS = {"TaskSucceeded", "TaskFailed", "TaskTimedOut", "TaskAborted"}


def _detail(event: dict) -> dict:
    return next((v for k, v in event.items() if k.endswith("EventDetails") and isinstance(v, dict)), {})


def _blocked(sfn: Any, batch: Any, arn: str) -> bool:
    """Every task scheduled has submitted its job, every job that ended has its task's end in the
    history, and at least one job waits in RUNNABLE: nothing moves until someone acts."""
    events, kwargs = [], {"executionArn": arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events += page["events"]
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    types = [e["type"] for e in events if _detail(e).get("resourceType") == "batch"]  # not the DynamoDB reads
    if types.count("TaskScheduled") != types.count("TaskSubmitted"):
        return False  # a task is on its way to Batch
    job_ids = [json.loads(e["taskSubmittedEventDetails"]["output"])["JobId"] for e in events
               if e["type"] == "TaskSubmitted"]
    statuses = [j["status"] for start in range(0, len(job_ids), 100)
                for j in batch.describe_jobs(jobs=job_ids[start:start + 100])["jobs"]]
    ended = sum(1 for s in statuses if s in ("SUCCEEDED", "FAILED"))
    waiting = sum(1 for s in statuses if s == "RUNNABLE")
    return waiting > 0 and ended + waiting == len(job_ids) and sum(t in TASK_ENDS for t in types) == ended


class Driver:
    """Plays a scenario every interval in a background thread until stopped."""

    def __init__(self, sandbox: Any, scenario: Scenario, log: Any = print):
        self.sandbox, self.scenario, self.log = sandbox, scenario, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scenario-driver")

    def _run(self) -> None:
        round_no = 0
        while not self._stop.is_set():
            try:
                done = play_round(self.sandbox, self.scenario, round_no)
                self.log(f"scenario {self.scenario.name} round {round_no}: " +
                         ("; ".join(f"{k}: {v}" for k, v in done.items()) or "nothing due"))
            except Exception as exc:  # keep the platform alive; say what went wrong
                self.log(f"scenario {self.scenario.name} round {round_no} failed: {type(exc).__name__}: {exc}")
            round_no += 1
            self._stop.wait(self.scenario.interval_seconds)

    def start(self) -> Driver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
