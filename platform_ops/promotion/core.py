"""Promotion, decided (the pure core of the promotion issue): production names and tokens as
Metaflow makes them, the staging → production translation of a Metaflow state machine
definition, and definition-safety rules kept as data. No AWS, no Dagster.
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
from typing import Any

from platform_ops import naming


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
    needles = [f":{a}:" for a in mapping.accounts] + list(mapping.roles) + [f"s3://{b}/" for b in mapping.buckets]
    for text in _strings(definition):
        found += [n for n in needles if n in text]
    for name, task in _batch_tasks(definition.get("States", {})):
        queue = (task.get("Parameters") or {}).get("JobQueue")
        if queue in mapping.queues:
            found.append(f"{name}: JobQueue {queue}")
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
