"""How the `serve` process is tuned: the garbage collector, the GIL's switch interval and glibc's malloc.

Called by bot.cli's `serve` only (tests and the other commands run with Python's defaults):
- `quiet_collector` while the policy and the wiring are built, then `freeze_built`: the cyclic collector is off
  while millions of long-lived objects are made (10,000 services), and what was built is frozen (gc.freeze: never
  scanned again), so no full collection while serving walks the policy.
- `switch_interval`: a thread waiting for the GIL gets it after 1 ms instead of Python's 5 ms. An ack is a few
  GIL hand-offs between waitress's threads; while the evaluation cycle runs on another thread each hand-off could
  wait the whole interval (benchmark 9: acks overlapping a cycle had a p99 of 51 - 56 ms, the others 25 - 29 ms).
- `fewer_arenas` / `release_free_memory`: glibc gives each of the bot's ~90 threads that mallocs an arena of its
  own (up to 8 per core); two are enough for a process whose threads mostly wait, and memory freed while starting
  is handed back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def quiet_collector() -> None:
    gc.disable()


def freeze_built() -> None:
    gc.freeze()
    gc.enable()


def switch_interval() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)


def fewer_arenas() -> None:
    libc = _glibc()
    if libc is not None and not libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS):
        log.debug("mallopt(M_ARENA_MAX) refused")


def release_free_memory() -> None:
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (musl, macOS): the tuning is then skipped."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc
