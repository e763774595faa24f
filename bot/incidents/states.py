"""An incident's states and the moves between them: the diagram, the table, and the one function that moves.

    open ──approve──> executing ──plan done──> verifying ──SLOs stable──> recovered
      │                 │    ^                     └──within runs out──> verify_failed
      │                 │    └─Retry step / Resume─┐
      └──dismiss──> dismissed  └─step failed, or restart─> halted ──Stop──> failed

Every move is a conditional transition in the store (`move`): it happens only if the incident is still in the
state the move starts from, so two clicks, two threads or two processes never both make it. The table below
is the whole machine; `move` refuses anything not in it. The store keeps its own copy of which states are
active (its unique index allows one active incident per service); tests/test_states.py keeps the two equal.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from bot.infra.store import Incident, Store


class State(StrEnum):
    OPEN = "open"
    EXECUTING = "executing"
    HALTED = "halted"
    VERIFYING = "verifying"
    RECOVERED = "recovered"
    VERIFY_FAILED = "verify_failed"
    FAILED = "failed"
    DISMISSED = "dismissed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.EXECUTING, State.DISMISSED}),
    State.EXECUTING: frozenset({State.VERIFYING, State.HALTED}),
    State.HALTED: frozenset({State.EXECUTING, State.FAILED}),
    State.VERIFYING: frozenset({State.RECOVERED, State.VERIFY_FAILED}),
    State.RECOVERED: frozenset(),
    State.VERIFY_FAILED: frozenset(),
    State.FAILED: frozenset(),
    State.DISMISSED: frozenset(),
}
ACTIVE = tuple(s for s in State if TRANSITIONS[s])  # an incident in one of these is still being handled
FINAL = tuple(s for s in State if not TRANSITIONS[s])
CLOSED_BY_VERDICT = (State.RECOVERED, State.VERIFY_FAILED, State.FAILED)  # closes with freeze, checklist, summary


class BadMove(ValueError):
    """A move the table does not have: a bug in the caller, never a user's doing."""


def move(store: Store, incident_id: int, start: State, end: State, **fields: Any) -> Incident | None:
    """Move the incident from `start` to `end` (setting `fields`) if it is still in `start`; None otherwise."""
    if end not in TRANSITIONS[start]:
        raise BadMove(f"{start} -> {end} is not a move of an incident")
    return store.transition(incident_id, (start.value,), end.value, **fields)


# The kinds of an incident's durable work (bot.infra.replica runs them; bot.incidents.recovery handles them):
PLAN = "plan"  # run the approved plan (taken over from a dead replica: halted as interrupted)
VERIFY = "verify"  # one verification tick, due again every verify.every until the verdict and its close
AUTO = "auto"  # the automatic rollback, due when its grace period ends
CLOSE = "close"  # the close of an incident ended without verification (Stop)
ESCALATE = "escalate"  # mention the approvers again and page, when nobody acted on the warning in escalate.after
