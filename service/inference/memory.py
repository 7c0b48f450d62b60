"""Giving the C heap's free pages back to the system after long model runs.

A run split by ``max_run_steps`` allocates many medium-sized buffers (each run's outputs
and states, their copies); once freed, glibc keeps them in the process's heap, so a
server that served one long request would stay that much larger. ``malloc_trim`` returns
them. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def release_memory() -> None:
    """Return free heap pages to the system (glibc ``malloc_trim(0)``). Blocking, cheap
    next to the long run it follows; call it off the event loop."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
