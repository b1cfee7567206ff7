"""What a run did, as Dagster table metadata (one helper for every capability)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

MAX_CELL = 300


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, str):
        return value[:MAX_CELL]
    return value


def table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: _cell(row.get(c, "")) for c in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c) for c in columns]),
    )
