"""CloudWatch: custom metrics in, dashboards out, series back for charts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from platform_ops.adapters.aws import AwsError, aws_errors, pages


def put_metric_data(client: Any, namespace: str, calls: list[list[dict]]) -> int:
    """One PutMetricData per prepared batch; returns the datums sent."""
    sent = 0
    for datums in calls:
        with aws_errors():
            client.put_metric_data(Namespace=namespace, MetricData=datums)
        sent += len(datums)
    return sent


def put_dashboard_if_changed(client: Any, name: str, body: str) -> bool:
    """PutDashboard only when the body differs from what is there; True when it was put."""
    try:
        with aws_errors():
            current = client.get_dashboard(DashboardName=name).get("DashboardBody")
    except AwsError as exc:
        if exc.code not in ("ResourceNotFound", "ResourceNotFoundException", "DashboardNotFoundError"):
            raise
        current = None
    if current == body:
        return False
    with aws_errors():
        client.put_dashboard(DashboardName=name, DashboardBody=body)
    return True


def metric_series(client: Any, namespace: str, queries: list[tuple[str, str, dict[str, str]]],
                  start: datetime, end: datetime, period: int = 300) -> dict[str, list[tuple[datetime, float]]]:
    """GetMetricData (Maximum per period) for (label, metric, dimensions) queries, by label."""
    metric_queries = [{
        "Id": f"q{i}", "Label": label, "ReturnData": True,
        "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": metric,
                                  "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]},
                       "Period": period, "Stat": "Maximum"},
    } for i, (label, metric, dims) in enumerate(queries)]
    series: dict[str, list[tuple[datetime, float]]] = {}
    for start_i in range(0, len(metric_queries), 500):
        for page in pages(client.get_metric_data, "NextToken", StartTime=start, EndTime=end,
                          MetricDataQueries=metric_queries[start_i:start_i + 500]):
            for result in page.get("MetricDataResults", []):
                series.setdefault(result["Label"], []).extend(zip(result["Timestamps"], result["Values"], strict=True))
    return {k: sorted(v) for k, v in series.items()}
