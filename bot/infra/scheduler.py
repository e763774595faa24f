"""APScheduler 3.x wiring: each replica's local ticker (the evaluation loop, its heartbeat and its work poll).

Created by bot.app for `serve`. Its jobs live in memory and are the same in every replica; what must happen once
(plan runs, verification ticks, timers, closes) is durable work in the store, which bot.infra.replica takes and
runs, so nothing is lost with a process.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler


class Scheduler:
    def __init__(self, workers: int = 16) -> None:
        self._s = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
            timezone=timezone.utc,
        )

    def start(self) -> None:
        if not self._s.running:
            self._s.start()

    def shutdown(self) -> None:
        if self._s.running:
            self._s.shutdown(wait=False)

    def every(self, job_id: str, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn every `seconds`, first right away; replaces a job with the same id."""
        self._s.add_job(fn, "interval", args=args, id=job_id, replace_existing=True,
                        seconds=seconds, next_run_time=datetime.now(timezone.utc))

    def cancel(self, job_id: str) -> None:
        if self._s.get_job(job_id):
            self._s.remove_job(job_id)
