"""Recent search-query vectors, shared by the recall before a turn and both Mem0 instances."""

from __future__ import annotations

import threading

from cachetools import TTLCache


class QueryVectors:
    """Recent search-query vectors, shared by both Mem0 instances: a turn's message is embedded as a query for
    the recall before the turn and again by Mem0's addition after it, to find the memories it may update."""

    def __init__(self, size: int = 1024, seconds: float = 600.0) -> None:
        self._vectors: TTLCache[str, list[float]] = TTLCache(maxsize=size, ttl=seconds)
        self._lock = threading.Lock()  # Mem0 calls from its worker threads

    def get(self, text: str) -> list[float] | None:
        with self._lock:
            return self._vectors.get(text)

    def put(self, text: str, vector: list[float]) -> None:
        with self._lock:
            self._vectors[text] = vector
