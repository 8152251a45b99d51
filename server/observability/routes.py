from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST


@get("/metrics", opt={"rate_limit": None}, include_in_schema=False, sync_to_thread=False)
def metrics(state: State) -> Response[bytes]:
    """Prometheus exposition: every worker's metrics under `agentctl serve`, whichever worker answers."""
    return Response(state.resources.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
