"""The incident state machine as a table (bot.incidents.states): the store agrees on which states are active,
`move` refuses a move the table does not have, and every move the domain makes is in the table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bot.incidents.states import ACTIVE, FINAL, TRANSITIONS, BadMove, State, move
from bot.infra.store import ACTIVE_STATES, FINAL_STATES, Store

ROOT = Path(__file__).resolve().parent.parent


def test_the_store_and_the_table_agree_on_active_and_final_states() -> None:
    assert set(ACTIVE_STATES) == {s.value for s in ACTIVE}
    assert set(FINAL_STATES) == {s.value for s in FINAL}
    assert set(TRANSITIONS) == set(State)


def test_every_state_but_open_is_reached_from_open() -> None:
    seen, todo = {State.OPEN}, [State.OPEN]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)


def test_move_refuses_what_the_table_does_not_have_and_makes_what_it_has(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'bot.db'}")
    opened = store.open_incident(service="model-svc", trigger="p95", detail={}, baseline={}, breach_started_at=None,
                                 channel="C1", requested_by=None)
    assert opened is not None
    with pytest.raises(BadMove, match="open -> recovered"):
        move(store, opened.id, State.OPEN, State.RECOVERED)
    assert store.incident(opened.id).state == "open", "a refused move changes nothing"
    moved = move(store, opened.id, State.OPEN, State.EXECUTING, approved_by="U1")
    assert moved is not None and moved.state == "executing" and moved.approved_by == "U1"
    assert move(store, opened.id, State.OPEN, State.DISMISSED) is None, "no longer open: the move does not happen"
    assert store.incident(opened.id).state == "executing"


def _moves_in(path: Path) -> list[tuple[str, str]]:
    """(start, end) of every `move(store, id, State.X, State.Y, ...)` call in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "move" and len(node.args) >= 4:
            start, end = node.args[2], node.args[3]
            names = [a.attr if isinstance(a, ast.Attribute) else getattr(a, "id", "?") for a in (start, end)]
            found.append((names[0], names[1]))
    return found


def test_every_move_the_domain_makes_is_in_the_table_and_nothing_else_transitions() -> None:
    moves = []
    for path in sorted((ROOT / "bot" / "incidents").glob("*.py")):
        moves += _moves_in(path)
        text = path.read_text()
        assert ".transition(" not in text or path.name == "states.py", f"{path.name} moves around the table"
    assert len(moves) >= 10
    for start, end in moves:
        assert State[end] in TRANSITIONS[State[start]], (start, end)
