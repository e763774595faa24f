"""One replica among many on one database: its membership lease, its share of the evaluation shards, and the
durable work it takes (issue 13). Coordination is through the database alone (bot.infra.store.leases, work).

Built by bot.app for every runtime (one replica on SQLite is the same code with nobody to share with). bot.incidents
schedules work through it (`schedule`, `cancel`: plan runs, verification ticks, automatic-rollback timers,
closes); bot.app registers a handler per kind, and the replica runs what is due on its own thread pool, each item
under its fence (bot.infra.store.database.fenced), so a replica paused past its lease and resumed writes nothing.

- **Membership**: the lease `replica:<id>`, renewed every ttl/3. If a renewal finds it expired (the process was
  paused, or the database unreachable, for longer than the ttl) it is lost for good: the replica acquires it
  again under a new epoch, and everything it was doing under the old one is refused by the store.
- **Shards**: services hash to SHARDS shards, each a lease `shard:<n>`; every heartbeat a replica keeps at most
  ceil(SHARDS / live replicas) of them, handing extras back and taking free or expired ones, so each service is
  evaluated by one replica per cycle and a dead replica's shards move within a ttl.
- **Work**: every poll (POLL seconds) the replica takes due rows that are nobody's, its own, or a dead
  replica's (taken over: the handler is told, e.g. to halt a plan as interrupted) and runs them. A handler
  returns the seconds until the row is due again (a verification tick) or None when the row is done.
- `sweepers` run every poll too (handlers.slack_http takes over Slack requests a dead replica acked).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bot.infra import metrics
from bot.infra.scheduler import Scheduler
from bot.infra.store import Fence, Fenced, Store, WorkItem, fenced
from bot.infra.store.work import REPLICA

log = logging.getLogger(__name__)

SHARDS = 16  # evaluation shards: the same number in every replica (it is part of the hash)
POLL = 0.5  # seconds between two looks at the work table
WORKERS = 16  # threads running work items (a plan holds one for its whole run)
DEFAULT_TTL = 15.0  # ROLLBACK_LEASE_TTL


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def shard_of(service: str) -> int:
    """The shard a service belongs to: a stable hash (the same in every replica and every run)."""
    return zlib.crc32(service.encode()) % SHARDS


Handler = Callable[[WorkItem, bool], "float | None"]  # (row, taken over) -> seconds until due again, or None: done


@dataclass(frozen=True)
class Taken:
    """What `run_due` started: the row and whether it was taken over from a dead replica."""

    item: WorkItem
    taken_over: bool


class Replica:
    def __init__(self, store: Store, ticker: Scheduler, *, replica_id: str | None = None,
                 ttl: float = DEFAULT_TTL, exclusive: bool = False) -> None:
        self.store = store
        self.ticker = ticker
        self.id = replica_id or default_replica_id()
        self.ttl = ttl
        # The only replica there can be (SQLite, held by one `serve`): every other lease is a dead process's.
        self.exclusive = exclusive
        self.handlers: dict[str, Handler] = {}
        self.sweepers: list[Callable[[Fence], object]] = []
        self.on_shards_changed: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._joining = threading.Lock()  # one lazy join (`fence`) at a time: each join is a new epoch
        self._membership: Fence | None = None
        self._shards: dict[int, Fence] = {}
        self._running: set[str] = set()
        self._started = False
        self._renewed = 0.0  # time.monotonic() of the last join or renewal of the membership lease
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="work")

    # -- what the domain uses ---------------------------------------------------------------------------
    def schedule(self, kind: str, incident_id: int, *, due_in: float = 0.0, every: float | None = None,
                 keep_here: bool = False) -> None:
        """Make the work (kind, incident) due in `due_in` seconds, for whichever live replica takes it, or with
        `keep_here` for this one (verification stays where its plan ran, until this replica dies)."""
        self.store.schedule_work(kind, incident_id, due_in=max(0.0, due_in), every=every,
                                 owner=self._membership if keep_here else None)

    def adopt(self, kind: str, incident_id: int, *, due_in: float = 0.0, every: float | None = None,
              interrupted: bool = False) -> None:
        """Make sure (kind, incident) has a row, leaving any existing one alone (a live replica may be on it).
        `interrupted`: the work was in flight in a process that left no row (a database from before replicas),
        so it is handed over as taken over from a dead owner."""
        self.store.schedule_work(kind, incident_id, due_in=due_in, every=every, keep=True, orphan=interrupted)

    def cancel(self, kind: str, incident_id: int) -> None:
        self.store.cancel_work(kind, incident_id)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Join: take the membership lease (a new epoch), then heartbeat and poll on the local ticker."""
        self.join()
        self.rebalance()
        self._started = True
        self.ticker.every(f"heartbeat-{self.id}", self.ttl / 3, self.heartbeat)
        self.ticker.every(f"work-{self.id}", POLL, self.poll)

    def stop(self) -> None:
        """Hand everything back (a clean shutdown): the others take it at once instead of after a ttl."""
        self.ticker.cancel(f"heartbeat-{self.id}")
        self.ticker.cancel(f"work-{self.id}")
        with self._lock:
            fences = [*self._shards.values(), *([self._membership] if self._membership else [])]
            self._shards.clear()
            self._membership = None
        for fence in fences:
            try:
                self.store.release_lease(fence)
            except Exception:  # noqa: BLE001 - the lease expires by itself
                log.warning("could not release %s at shutdown", fence.name)
        self._export()

    def join(self) -> Fence:
        fence = self.store.acquire_lease(REPLICA + self.id, self.id, self.ttl)
        if fence is None:  # cannot happen: a replica may always re-take its own id's lease
            raise RuntimeError(f"could not take the lease {REPLICA}{self.id}")
        if self.exclusive:
            self.store.expire_leases(self.id)
        with self._lock:
            self._membership = fence
        self._renewed = time.monotonic()
        log.info("replica %s joined (epoch %s)", self.id, fence.epoch)
        self._export()
        return fence

    @property
    def fence(self) -> Fence:
        """The membership lease as held now (what new work and new Slack requests are owned under); the replica
        joins on first use if `start` has not run yet (a runtime serving requests before its loops start)."""
        fence = self._membership
        if fence is not None:
            return fence
        with self._joining:
            return self._membership or self.join()

    @property
    def stale(self) -> bool:
        """Whether a started replica has not renewed its lease for a whole ttl (its database is unreachable or
        hangs): the others have taken its work, and a load balancer should stop sending it requests."""
        return self._started and time.monotonic() - self._renewed > self.ttl

    @property
    def epoch(self) -> int | None:
        """The membership lease's epoch, None before the replica joined."""
        fence = self._membership
        return fence.epoch if fence else None

    def leases(self) -> list[str]:
        with self._lock:
            names = [self._membership.name] if self._membership else []
            return names + [self._shards[n].name for n in sorted(self._shards)]

    # -- heartbeat: membership and shards -------------------------------------------------------------
    def heartbeat(self) -> None:
        try:
            membership = self._membership
            if membership is not None and self.store.renew_lease(membership, self.ttl):
                self._renewed = time.monotonic()
            else:
                if membership is not None:
                    log.warning("replica %s lost its lease (epoch %s): joining again under a new one",
                                self.id, membership.epoch)
                    self._drop_shards()
                self.join()
            self.rebalance()
        except Exception:  # noqa: BLE001 - the database is unreachable: the next heartbeat tries again
            log.exception("replica %s: heartbeat failed", self.id)

    def rebalance(self) -> None:
        """Keep the held shards alive and hold a fair share: ceil(SHARDS / live replicas). The only replica of
        its database evaluates every service without shards."""
        if self.exclusive:
            return
        with self._lock:
            held = dict(self._shards)
        kept = self.store.renew_leases(list(held.values()), self.ttl) if held else set()
        shards = {n: f for n, f in held.items() if f.name in kept}
        live = max(1, len(self.store.live_leases(REPLICA)))
        target = math.ceil(SHARDS / live)
        for n in sorted(shards, reverse=True)[:max(0, len(shards) - target)]:
            self.store.release_lease(shards.pop(n))
        if len(shards) < target:
            start = zlib.crc32(self.id.encode()) % SHARDS
            for n in ((start + i) % SHARDS for i in range(SHARDS)):
                if len(shards) >= target:
                    break
                if n not in shards and (fence := self.store.acquire_lease(f"shard:{n}", self.id, self.ttl)):
                    shards[n] = fence
        with self._lock:
            changed = set(shards) != set(self._shards)
            self._shards = shards
        self._export()
        if changed:
            for callback in self.on_shards_changed:
                callback()

    def _drop_shards(self) -> None:
        with self._lock:
            self._shards = {}
        for callback in self.on_shards_changed:
            callback()

    def shard_fence(self, service: str) -> Fence | None:
        """The lease under which this replica evaluates `service` now, or None if another replica does."""
        with self._lock:
            return self._shards.get(shard_of(service))

    def owns(self, service: str) -> bool:
        """Whether this replica evaluates `service` now (the only replica of its database evaluates all)."""
        return self.exclusive or self.shard_fence(service) is not None

    def may_act(self, service: str) -> bool:
        """Whether this replica still holds `service`'s shard, read from the database now (the gate asks it right
        before it moves aliases)."""
        if self.exclusive:
            return True
        fence = self.shard_fence(service)
        return fence is not None and self.store.holds_lease(fence)

    def _export(self) -> None:
        metrics.LEASES_HELD.set(len(self.leases()))

    # -- work ---------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Take what is due and run it on the pool; then let the sweepers take over a dead replica's requests."""
        try:
            self.run_due()
            me = self._membership
            if me is not None:
                for sweep in self.sweepers:
                    sweep(me)
        except Exception:  # noqa: BLE001 - the next poll tries again
            log.exception("replica %s: polling for work failed", self.id)

    def run_due(self, wait: bool = False) -> list[Taken]:
        """Start every due row this replica may take (`wait`: and wait for them, as tests do)."""
        me = self._membership
        if me is None:
            return []
        with self._lock:
            running = frozenset(self._running)
        started: list[Taken] = []
        for item in self.store.due_work(me, exclude=running):
            if item.kind not in self.handlers or not self.store.take_work(item, me):
                continue
            taken_over = item.owner is not None and (item.owner, item.owner_epoch) != (me.owner, me.epoch)
            if taken_over:
                metrics.WORK_TAKEN_OVER.labels(kind=item.kind).inc()
                log.info("replica %s takes over %s from %s (epoch %s)", self.id, item.key, item.owner,
                         item.owner_epoch)
            with self._lock:
                self._running.add(item.key)
            started.append(Taken(item, taken_over))
        futures = [self._pool.submit(self._run, t.item, t.taken_over, me) for t in started]
        if wait:
            for future in futures:
                future.result()
        return started

    def _run(self, item: WorkItem, taken_over: bool, me: Fence) -> None:
        try:
            with fenced(me):
                again = self.handlers[item.kind](item, taken_over)
                if again is None:
                    self.store.work_done(item, me)
                else:
                    self.store.work_again(item, me, again)
        except Fenced as exc:
            log.warning("replica %s: %s stopped: %s", self.id, item.key, exc)
        except Exception:  # noqa: BLE001 - logged; the row stays and is due again later
            log.exception("replica %s: %s failed", self.id, item.key)
            try:
                with fenced(me):
                    self.store.work_again(item, me, item.every or self.ttl)
            except Exception:  # noqa: BLE001 - the row is retaken when this replica's lease expires
                log.warning("replica %s: could not reschedule %s", self.id, item.key)
        finally:
            with self._lock:
                self._running.discard(item.key)
