"""One set of naming conventions for Metaflow projects, shared by the project template's hook,
the promotion checks and the sandbox's fixtures. Pure standard library, so the template's hook can
load it without platform-ops installed.

Names are what everything platform-ops sees in Batch and Step Functions is keyed on: alerts map
owners from them, dashboards group by them, promotion derives production names from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PROJECT = 40
MAX_BRANCH = 60
PROJECT_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # Metaflow @project: [a-z0-9_], we also require a letter first
FLOW_RE = re.compile(r"^[A-Z][A-Za-z0-9]*Flow$")
BRANCH_RE = re.compile(r"^[a-z0-9_]+$")
USER_RE = re.compile(r"^[a-z][a-z0-9_]*$")
TAG_KEY_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9 +\-=._:/@]*$")  # what Metaflow's sanitize_batch_tag keeps
TEAM_RE = re.compile(r"^[a-z][a-z0-9-]*$")
SLACK_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
REQUIRED_TAGS = ("owner", "project", "team")


class NamingError(ValueError):
    """A name breaks a convention; the message says which rule and shows an accepted example."""


def _check(value: str, ok: bool, what: str, rule: str, example: str) -> str:
    if not ok:
        raise NamingError(f"{what} {value!r}: {rule} (e.g. {example!r})")
    return value


def check_project(name: str) -> str:
    return _check(name, bool(PROJECT_RE.match(name or "")) and len(name) <= MAX_PROJECT, "project name",
                  f"lowercase letters, digits and underscores, starting with a letter, at most {MAX_PROJECT} "
                  "characters (Metaflow's @project rule; no hyphens)", "fraud_detection")


def check_flow(name: str) -> str:
    return _check(name, bool(FLOW_RE.match(name or "")), "flow class name",
                  "CamelCase letters and digits ending in 'Flow'", "ScoringFlow")


def check_branch(name: str) -> str:
    return _check(name, bool(BRANCH_RE.match(name or "")) and len(name) <= MAX_BRANCH, "branch name",
                  f"lowercase letters, digits and underscores, at most {MAX_BRANCH} characters "
                  "(use sanitize_branch on a git branch)", "feature_new_model")


def check_user(name: str) -> str:
    return _check(name, bool(USER_RE.match(name or "")), "owner",
                  "a lowercase username: letters, digits, underscores", "alice")


def check_team(name: str) -> str:
    return _check(name, bool(TEAM_RE.match(name or "")), "team", "lowercase letters, digits, hyphens", "risk-ml")


def check_slack_id(value: str) -> str:
    if not value:
        return value
    return _check(value, bool(SLACK_ID_RE.match(value)), "Slack user id", "empty, or an id like U0123ABCD",
                  "U0ALICE")


def check_tag(key: str, value: str) -> tuple[str, str]:
    _check(key, bool(TAG_KEY_RE.match(key or "")) and len(key) <= 128, "tag key",
           "lowercase letters, digits, '_', '.', '-', at most 128 characters", "cost_center")
    _check(value, bool(TAG_VALUE_RE.match(value or "")) and len(value) <= 256, f"tag {key} value",
           "letters, digits, spaces and + - = . _ : / @, at most 256 characters", "ml-platform")
    return key, value


def sanitize_branch(git_branch: str) -> str:
    """A git branch as Metaflow accepts it: lowercase, anything outside [a-z0-9_] becomes '_'."""
    cleaned = re.sub(r"[^a-z0-9_]", "_", git_branch.strip().lower())
    cleaned = re.sub(r"_+", "_", cleaned).strip("_") or "main"
    return cleaned[:MAX_BRANCH]


def project_tags(owner: str, project: str, team: str) -> dict[str, str]:
    """The tags every deployment of a project carries, so alerts and dashboards need no guessing."""
    return dict(check_tag(k, v) for k, v in (("owner", check_user(owner)), ("project", check_project(project)),
                                             ("team", check_team(team))))


@dataclass(frozen=True)
class StateMachineName:
    """`<project>.<branch>.<Flow>` per Metaflow's @project: branch is user.<name>, test.<branch>,
    prod or prod.<branch>."""

    project: str
    branch: str
    flow: str

    def __str__(self) -> str:
        return f"{self.project}.{self.branch}.{self.flow}"

    @property
    def kind(self) -> str:
        return self.branch.split(".", 1)[0]  # user | test | prod

    @property
    def is_production(self) -> bool:
        return self.kind == "prod"


def state_machine_name(project: str, flow: str, *, user: str | None = None, branch: str | None = None,
                       production: bool = False) -> StateMachineName:
    """The name Metaflow deploys a @project flow under (step-functions create)."""
    check_project(project)
    check_flow(flow)
    if production:
        label = f"prod.{check_branch(branch)}" if branch else "prod"
    elif branch:
        label = f"test.{check_branch(branch)}"
    else:
        label = f"user.{check_user(user or '')}"
    return StateMachineName(project, label, flow)


def parse_state_machine_name(name: str) -> StateMachineName:
    """Back from a state machine name; NamingError when it does not follow the scheme."""
    parts = name.split(".")
    if len(parts) < 3:
        raise NamingError(f"state machine {name!r}: expected <project>.<user.NAME|test.BRANCH|prod[.BRANCH]>.<Flow>")
    project, flow, label = parts[0], parts[-1], ".".join(parts[1:-1])
    check_project(project)
    check_flow(flow)
    kind, _, rest = label.partition(".")
    if kind == "user" and rest:
        check_user(rest)
    elif kind == "test" and rest:
        check_branch(rest)
    elif kind == "prod":
        if rest:
            check_branch(rest)
    else:
        raise NamingError(f"state machine {name!r}: branch part {label!r} must be user.<name>, test.<branch>, "
                          "prod or prod.<branch>")
    return StateMachineName(project, label, flow)
