"""What the Dagster daemon does with this code location, in one process: tick the sensors that
watch AWS with the cursors it stored, and launch each requested run once per run key. `make smoke`
and the fault suite drive the product through it; `dedupe=False` is a daemon that launches a
request twice (the worst a duplicated tick can do)."""

from __future__ import annotations

import logging
from typing import Any

RUN_KEY_TAG = "dagster/run_key"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


class Daemon:
    def __init__(self, defs: Any, instance: Any, cursors: dict[str, str | None] | None = None, dedupe: bool = True):
        import dagster as dg

        self.defs, self.instance, self.dedupe = defs, instance, dedupe
        self.cursors: dict[str, str | None] = cursors if cursors is not None else {}
        self.repo = defs.get_repository_def()
        self.sensor_names = [s.name for s in self.repo.sensor_defs if not isinstance(s, dg.RunStatusSensorDefinition)]
        self.ticks_failed = 0
        self.tick_errors: list[str] = []
        self.tick_logs: list[str] = []  # what an operator reads on the sensor's tick in the UI
        self.runs: list[Any] = []

    def tick(self, name: str, cursor: Any = ...) -> list[Any]:
        """Evaluate one tick of sensor `name` (with the stored cursor unless one is given) and
        store its cursor; its run requests, each with its job name."""
        import dagster as dg

        sensor = self.repo.get_sensor_def(name)
        cursor = self.cursors.get(name) if cursor is ... else cursor
        capture = _Capture()
        logger = logging.getLogger("dagster")
        logger.addHandler(capture)
        try:
            with dg.build_sensor_context(instance=self.instance, resources=self.defs.resources, sensor_name=name,
                                         repository_def=self.repo, cursor=cursor) as ctx:
                result = sensor.evaluate_tick(ctx)
        except Exception as exc:  # the daemon records a failed tick and tries again next interval
            self.ticks_failed += 1
            self.tick_errors.append(f"{name}: {exc}")
            return []
        finally:
            logger.removeHandler(capture)
            self.tick_logs += [f"{name}: {line}" for line in capture.lines]
        self.cursors[name] = result.cursor if result.cursor is not None else cursor
        return [(request, request.job_name or sensor.job_name) for request in result.run_requests or []]

    def launch(self, request: Any, job_name: str) -> Any | None:
        """Execute the requested run unless a run with its key exists (the daemon's rule)."""
        import dagster as dg

        key = request.run_key
        if self.dedupe and key and self.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}), limit=1):
            return None
        tags = {**(request.tags or {}), **({RUN_KEY_TAG: key} if key else {})}
        run = self.defs.resolve_job_def(job_name).execute_in_process(
            run_config={**request.run_config, **QUIET}, instance=self.instance, tags=tags, raise_on_error=False)
        self.runs.append(run)
        return run

    def cycle(self, names: list[str] | None = None) -> list[Any]:
        """One tick of each sensor (all that watch AWS by default), launching what they request."""
        launched = []
        for name in names or self.sensor_names:
            for request, job_name in self.tick(name):
                run = self.launch(request, job_name)
                if run is not None:
                    launched.append(run)
        return launched

    @property
    def runs_failed(self) -> int:
        return sum(1 for run in self.runs if not run.success)
