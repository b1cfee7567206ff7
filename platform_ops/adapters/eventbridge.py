"""EventBridge: which watched state machines a schedule rule starts. The only module that calls
the `events` API.

How Metaflow schedules a flow (metaflow 2.19, plugins/aws/step_functions/event_bridge_client.py):
`step-functions create` on a flow with `@schedule` calls put_rule(Name=<state machine name>,
ScheduleExpression="cron(<6-field AWS cron>)", State="ENABLED", Description="Metaflow generated
rule for <name>") on the default bus, then put_targets with one target, Id = the rule name, Arn =
the state machine ARN, Input `{"Parameters": "{}"}`. A name over 64 characters becomes its first
47 + "-" + 16 lowercase base32 characters of its sha1. Removing `@schedule` and redeploying
DISABLES the rule (it stays); `step-functions delete` removes the target, then the rule.

Call pattern, the cheapest that still checks the target (cost per check, R = rules whose name
starts with a watched prefix, S = enabled schedule rules named like a watched state machine whose
target is not yet known):
    ListRules(NamePrefix, Limit=100)   ceil(R / 100) per prefix, at least 1
    ListTargetsByRule(Rule)            S (Metaflow puts one target: one page each)
At 200 scheduled state machines under one prefix: 2 + 200 calls on the first check, then 2 a
check when the caller keeps `known_targets` between checks (the target of a Metaflow rule is the
state machine ARN, which a redeploy keeps). ListRuleNamesByTarget would cost one call per watched
state machine, scheduled or not, and ListRules on top for the expressions: more, never less.
Not seen: a rule someone made by hand under a name unlike the state machine's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from platform_ops.adapters.aws import AwsError, aws_errors
from platform_ops.schedules.core import ScheduledStateMachine

RULES_PAGE = 100  # ListRules' maximum Limit
RULE_NAME_MAX = 64  # EventBridge's limit on rule names
_KEPT = 47  # Metaflow keeps this much of a long name before its hash suffix


def rule_name(state_machine_name: str) -> str:
    """The rule name Metaflow gives a state machine's schedule (event_bridge_client.format)."""
    if len(state_machine_name) <= RULE_NAME_MAX:
        return state_machine_name
    digest = base64.b32encode(hashlib.sha1(state_machine_name.encode()).digest()).decode()[:16].lower()
    return f"{state_machine_name[:_KEPT]}-{digest}"


def rule_prefixes(prefixes: Iterable[str]) -> list[str]:
    """NamePrefixes to list rules by: each state machine prefix cut to what a long name keeps,
    none that another covers (so no rule is listed twice)."""
    cut = sorted({p[:_KEPT] for p in prefixes} or {""})
    return [p for i, p in enumerate(cut) if not any(p.startswith(q) for q in cut[:i])]


def _name(state_machine_arn: str) -> str:
    return state_machine_arn.rsplit(":", 1)[-1]  # arn:aws:states:<region>:<account>:stateMachine:<name>


def _targets(client: Any, rule: str) -> frozenset[str] | None:
    """The target ARNs of `rule`, or None if it was deleted since it was listed."""
    try:
        with aws_errors():
            return frozenset(t["Arn"] for page in client.get_paginator("list_targets_by_rule").paginate(Rule=rule)
                             for t in page.get("Targets", []))
    except AwsError as exc:
        if exc.code == "ResourceNotFoundException":
            return None
        raise


def scheduled_state_machines(client: Any, state_machines: Mapping[str, datetime],
                             prefixes: Iterable[str] = ("",),
                             known_targets: dict[str, frozenset[str]] | None = None) -> list[ScheduledStateMachine]:
    """The schedule rule of each watched state machine that has one (`state_machines`: ARN ->
    creationDate; `prefixes`: the watched name prefixes). An enabled rule counts only if its target
    is the state machine; a disabled one is returned as such without a look at its targets.
    `known_targets` (rule ARN -> target ARNs), kept by the caller, saves ListTargetsByRule on the
    next check; pass a fresh dict to look again."""
    by_rule = {rule_name(_name(arn)): arn for arn in state_machines}
    known = known_targets if known_targets is not None else {}
    paginator = client.get_paginator("list_rules")
    found: list[ScheduledStateMachine] = []
    for prefix in rule_prefixes(prefixes):
        kwargs = {"NamePrefix": prefix} if prefix else {}
        with aws_errors():
            rules = [r for page in paginator.paginate(**kwargs, PaginationConfig={"PageSize": RULES_PAGE})
                     for r in page.get("Rules", [])]
        for rule in rules:
            arn = by_rule.get(rule["Name"])
            expression = rule.get("ScheduleExpression")
            if arn is None or not expression:
                continue
            enabled = rule.get("State", "DISABLED") != "DISABLED"
            if enabled:
                if rule["Arn"] not in known:
                    targets = _targets(client, rule["Name"])
                    if targets is None:
                        continue
                    known[rule["Arn"]] = targets
                if arn not in known[rule["Arn"]]:
                    continue
            found.append(ScheduledStateMachine(arn, rule["Name"], expression, enabled, state_machines[arn]))
    return found
