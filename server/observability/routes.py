from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@get("/metrics", opt={"rate_limit": None}, include_in_schema=False, sync_to_thread=False)
def metrics(state: State) -> Response[bytes]:
    """Prometheus exposition of this worker's metrics."""
    return Response(generate_latest(state.resources.metrics), media_type=CONTENT_TYPE_LATEST)
