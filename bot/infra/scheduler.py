"""APScheduler 3.x wiring: the evaluation loop, one verification job per incident, and one-off background
work (running an approved plan) so Slack handlers return right after their ack.

Created by bot.app for `serve`. Jobs live in memory (APScheduler's MemoryJobStore), so each process schedules
its own; one process per database until the many-replica issue (13) decides who runs what. A restarted process
re-creates its jobs from the store (bot.incidents.recovery).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
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

    def soon(self, fn: Callable[..., Any], *args: Any, delay: float = 0.0, job_id: str | None = None) -> None:
        """Run fn once after `delay` seconds; with a `job_id` it replaces (and can be cancelled like) a job."""
        self._s.add_job(fn, "date", args=args, run_date=datetime.now(timezone.utc) + timedelta(seconds=delay),
                        id=job_id, replace_existing=job_id is not None, misfire_grace_time=None)

    def cancel(self, job_id: str) -> None:
        if self._s.get_job(job_id):
            self._s.remove_job(job_id)
