"""Worker threads that must not compete with the event loop for the CPU."""

from __future__ import annotations

import contextlib
import os
import threading

# How much lower than the event loop such threads run. Linux gives each thread its own nice value; at +10 the
# scheduler hands an event loop that wants the CPU about nine tenths of a contended core.
BACKGROUND_NICENESS = 10


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Run the calling thread ``niceness`` steps below the process (an executor's initializer)."""
    if niceness and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness)
