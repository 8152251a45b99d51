from __future__ import annotations

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from server.observability.metrics import AppMetrics


@get("/metrics", opt={"rate_limit": None}, include_in_schema=False, sync_to_thread=False)
def metrics(metrics: AppMetrics) -> Response[bytes]:
    """Prometheus exposition: every worker's metrics under `agentctl serve`, whichever worker answers."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
