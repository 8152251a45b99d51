"""Recent search-form vectors, shared by the recall before a turn and both Mem0 instances."""

from __future__ import annotations

import threading
from array import array

from cachetools import TTLCache


class QueryVectors:
    """Recent vectors of texts embedded in the search form, by text: a turn's message is embedded once, for the
    recall before the turn, and found here by Mem0 when it searches or stores the same text after it.

    Kept as float32 arrays (1.5 KB each for 384 dimensions, not the 12 KB of a list of Python floats), so that a
    few minutes of turns fit: under load the writers may take a while to reach a turn."""

    def __init__(self, size: int = 4096, seconds: float = 600.0) -> None:
        self._vectors: TTLCache[str, array[float]] = TTLCache(maxsize=size, ttl=seconds)
        self._lock = threading.Lock()  # Mem0 calls from its worker threads

    def get(self, text: str) -> list[float] | None:
        with self._lock:
            vector = self._vectors.get(text)
        return None if vector is None else vector.tolist()

    def put(self, text: str, vector: list[float]) -> None:
        compact = array("f", vector)
        with self._lock:
            self._vectors[text] = compact
