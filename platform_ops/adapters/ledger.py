"""State platform-ops keeps between runs, in the Dagster instance's key-value store: the alert
ledger (what was announced), the container instances metrics saw last time.

That store is the instance's run storage (SQLite under $DAGSTER_HOME locally, Postgres in
production), so a restarted daemon, a lost sensor cursor or a re-executed run all find it.
A Slack post is claimed here before it is sent and confirmed after Slack answered ok
(platform_ops/exactly_once.py decides what a record means).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


class Ledger:
    def __init__(self, instance: Any, namespace: str = "alerts"):
        self._instance = instance
        self._storage = instance.run_storage
        self._prefix = f"platform_ops/{namespace}/"

    @property
    def instance(self) -> Any:
        """The Dagster instance it keeps its records in (another capability's ledger reads it too)."""
        return self._instance

    def _get(self, keys: Iterable[str]) -> dict[str, dict]:
        keys = {self._prefix + k for k in keys}
        if not keys:
            return {}
        raw = self._storage.get_cursor_values(keys)
        found = {}
        for key, value in raw.items():
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if record:
                found[key.removeprefix(self._prefix)] = record
        return found

    def _put(self, key: str, record: dict) -> None:
        self._storage.set_cursor_values({self._prefix + key: json.dumps(record, sort_keys=True)})

    def executions(self, arns: Iterable[str]) -> dict[str, dict]:
        """Records of executions: {"state": "claimed"|"announced"|"muted", ...} (exactly_once.py)."""
        return {k.removeprefix("execution/"): v for k, v in self._get(f"execution/{a}" for a in arns).items()}

    def mute(self, arn: str, **record: Any) -> None:
        self._put(f"execution/{arn}", {"state": "muted", **record})

    def open_failures(self, state_machine_arns: Iterable[str]) -> dict[str, dict]:
        """The last announced failure of each state machine not yet followed by a success."""
        return {k.removeprefix("open/"): v for k, v in self._get(f"open/{a}" for a in state_machine_arns).items()}

    def open_failure(self, state_machine_arn: str, **record: Any) -> None:
        self._put(f"open/{state_machine_arn}", record)

    def close_failure(self, state_machine_arn: str) -> None:
        self._put(f"open/{state_machine_arn}", {})

    def get(self, key: str) -> dict | None:
        return self._get([key]).get(key)

    def qualified(self, key: str) -> str:
        """The key as stored, unique across namespaces (it names a message in Slack metadata)."""
        return self._prefix + key

    def run_finished(self, run_id: str | None) -> bool:
        """Whether the run that claimed a post has ended (or is unknown): its claim is no longer its own."""
        run = self._instance.get_run_by_id(run_id) if run_id else None
        return run is None or run.is_finished

    def put(self, key: str, **record: Any) -> None:
        self._put(key, record)
