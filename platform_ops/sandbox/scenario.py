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
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from platform_ops.sandbox import moto_internals

SCENARIOS = Path(__file__).parent / "scenarios"
_JOB_KEYS = {"count", "name", "vcpus", "memory", "created_minutes_ago", "tags", "parameters", "job_definition"}
_FAULT_KEYS = {"fault", "name_prefix", "step", "run_id", "index", "remaining", "created_minutes_ago", "after_seconds"}
_FLOW_KEYS = {"width", "faults"}
_INSTANCE_KEYS = {"register", "deregister"}


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Event:
    name: str
    environment: str
    queue: str
    jobs: dict[str, Any] = field(default_factory=dict)
    faults: tuple[dict[str, Any], ...] = ()
    flow: dict[str, Any] | None = None  # a Metaflow run: {width: N, faults: [...]} (faults for this run only)
    instances: dict[str, int] | None = None  # the compute environment scales: {register: N, deregister: M}
    every: int = 1
    once: bool = False

    def due(self, round_no: int) -> bool:
        return round_no == 0 if self.once else round_no % self.every == 0


@dataclass(frozen=True)
class Scenario:
    name: str
    interval_seconds: float
    events: tuple[Event, ...]


def parse_scenario(data: Any, source: str = "scenario") -> Scenario:
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise ScenarioError(f"{source}: expected a mapping with an 'events' list")
    events = []
    for i, raw in enumerate(data["events"]):
        where = f"{source}: events[{i}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: expected a mapping")
        for key in ("environment",) if raw.get("flow") or raw.get("instances") else ("environment", "queue"):
            if not isinstance(raw.get(key), str):
                raise ScenarioError(f"{where}.{key}: required string")
        flow = raw.get("flow")
        if flow is not None:
            if not isinstance(flow, dict) or set(flow) - _FLOW_KEYS:
                raise ScenarioError(f"{where}.flow: a mapping with keys {sorted(_FLOW_KEYS)}")
            _check_faults(f"{where}.flow", flow.get("faults") or [])
        instances = raw.get("instances")
        if instances is not None and (not isinstance(instances, dict) or set(instances) - _INSTANCE_KEYS):
            raise ScenarioError(f"{where}.instances: a mapping with keys {sorted(_INSTANCE_KEYS)}")
        jobs = raw.get("jobs") or {}
        unknown = set(jobs) - _JOB_KEYS
        if unknown:
            raise ScenarioError(f"{where}.jobs: unknown key {sorted(unknown)[0]!r} (known: {sorted(_JOB_KEYS)})")
        faults = raw.get("faults") or []
        _check_faults(where, faults)
        events.append(Event(
            name=str(raw.get("name", f"event {i}")), environment=raw["environment"], queue=raw.get("queue", ""),
            jobs=dict(jobs), faults=tuple(faults), flow=flow, instances=instances, every=int(raw.get("every", 1)),
            once=bool(raw.get("once", False)),
        ))
    return Scenario(str(data.get("name", source)), float(data.get("interval_seconds", 45)), tuple(events))


def _check_faults(where: str, faults: list) -> None:
    for j, fault in enumerate(faults):
        unknown = set(fault) - _FAULT_KEYS
        if unknown:
            raise ScenarioError(f"{where}.faults[{j}]: unknown key {sorted(unknown)[0]!r}")
        if fault.get("fault") not in moto_internals.FAULTS:
            raise ScenarioError(f"{where}.faults[{j}].fault: one of {sorted(moto_internals.FAULTS)}")


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
        for fault in event.faults:
            moto_internals.STATE.add_rule(moto_internals.FaultRule(account=account, queue=event.queue or None, **fault))
        if event.jobs:
            done[event.name] = len(sandbox.submit_jobs({"environment": event.environment, "queue": event.queue,
                                                        **event.jobs}))
        if event.flow is not None:
            run_id = f"{scenario.name}-{round_no}-{uuid.uuid4().hex[:8]}"
            for fault in event.flow.get("faults") or []:
                moto_internals.STATE.add_rule(moto_internals.FaultRule(account=account, run_id=run_id, **fault))
            env = sandbox.settings.environments[event.environment]
            flows.trigger(sandbox.endpoint, env, width=int(event.flow.get("width", 3)), name=run_id)
            done[event.name] = f"run sfn-{run_id}"
        if event.instances:
            env = sandbox.settings.environments[event.environment]
            up = world.register_instances(sandbox.endpoint, env, int(event.instances.get("register", 0)))
            down = world.deregister_instances(sandbox.endpoint, env, int(event.instances.get("deregister", 0)))
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

    def start(self) -> "Driver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
