"""Block Kit rendering: the warning's content and buttons, Slack's size limits, the typed-confirm modal."""

from __future__ import annotations

import json
from dataclasses import replace

from bot.infra.store import Incident
from bot.slack import blocks
from bot.slo.evaluation import Reading


def _incident(**changes: object) -> Incident:
    base = Incident(
        id=12, service="model-svc", active_service="model-svc", state="open", trigger="p95-latency",
        detail={"value": 0.412, "target": "< 0.25"}, baseline={"model": "recommender", "version": "4",
                                                                 "run_id": "abc123", "bad_version": "5"},
        breach_started_at=1_800_000_000.0, opened_at=1_800_000_030.0, warned_at=None, channel="C0MODELSVC",
        message_ts=None, progress_ts=None, requested_by=None, first_approver=None, approved_by=None, approved_at=None,
        executed_at=None, recovered_at=None, finished_at=None, error=None, verification={}, resume_from=None,
        halt_kind=None, auto_at=None, armed_by=None)
    return replace(base, **changes)  # type: ignore[arg-type]


def _buttons(body: list[dict]) -> dict[str, dict]:
    return {e["action_id"]: e for b in body if b["type"] == "actions" for e in b["elements"]}


def test_warning_names_service_slo_value_target_since_and_baseline() -> None:
    text, body = blocks.warning(_incident(), approvers=["U0A", "S0B"], confirm="dialog")
    flat = json.dumps(body)
    assert "model-svc" in text and "p95-latency" in text
    for part in ("0.412", "&lt; 0.25", "version 4", "abc123", "version 5", "08:00:00 UTC", "<@U0A>", "<!subteam^S0B>"):
        assert part in flat, part
    buttons = _buttons(body)
    assert buttons[blocks.APPROVE]["text"]["text"] == "Roll back" and buttons[blocks.APPROVE]["style"] == "danger"
    confirm = buttons[blocks.APPROVE]["confirm"]
    assert len(confirm["title"]["text"]) <= 100 and len(confirm["text"]["text"]) <= 300
    assert buttons[blocks.DRY_RUN]["text"]["text"] == "Dry run" and buttons[blocks.DISMISS]["text"]["text"] == "Dismiss"
    assert {b["value"] for b in buttons.values()} == {"12"}


def test_typed_confirm_has_no_dialog_and_a_modal_asking_for_the_name() -> None:
    _, body = blocks.warning(_incident(), approvers=["U0A"], confirm="typed")
    assert "confirm" not in _buttons(body)[blocks.APPROVE]
    modal = blocks.confirm_modal(incident_id=12, service="model-svc", baseline="recommender v4")
    assert modal["callback_id"] == blocks.CONFIRM_VIEW and modal["private_metadata"] == "12"
    assert "Type model-svc to confirm" in json.dumps(modal)


def test_buttons_disappear_once_the_incident_moves_on() -> None:
    for state, words in [("executing", "Rolling back"), ("verifying", "verifying"), ("recovered", "Recovered in"),
                         ("failed", "Rollback failed"), ("dismissed", "Dismissed")]:
        incident = _incident(state=state, approved_by="U0A", approved_at=1_800_000_060.0,
                             recovered_at=1_800_000_132.0, error="boom")
        _, body = blocks.warning(incident, approvers=["U0A"], confirm="dialog")
        assert not _buttons(body) and words in json.dumps(body), state
    _, body = blocks.warning(_incident(state="recovered", approved_by="U0A", approved_at=1_800_000_060.0,
                                       recovered_at=1_800_000_132.0), approvers=["U0A"], confirm="dialog")
    assert "Recovered in 1m12s" in json.dumps(body)


def test_long_texts_are_cut_to_slack_limits() -> None:
    huge = "x" * 10_000
    _, body = blocks.warning(_incident(state="failed", error=huge), approvers=["U0A"], confirm="dialog")
    for block in body:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
    assert len(blocks.event_text(0, huge)) <= 3900
    reading = Reading("model-svc", "p95", "error", None, "< 0.25", error=huge)
    _, progress = blocks.progress([reading] * 5, elapsed=1, stable_for=0, need_stable=60, within=300)
    assert all(len(b["text"]["text"]) <= 3000 for b in progress)


def test_no_data_is_shown_as_such() -> None:
    reading = Reading("model-svc", "p95", "nodata", None, "< 0.25")
    assert blocks.value_text(reading) == "no data"
    text, _ = blocks.progress([reading], elapsed=30, stable_for=0, need_stable=60, within=300)
    assert "stable for 0s of 1m" in text


def test_halted_and_automatic_incidents_offer_the_buttons_for_their_state() -> None:
    _, failed = blocks.warning(_incident(state="halted", halt_kind="failed", resume_from=1, error="helm: boom"),
                               approvers=["U0A"], confirm="dialog")
    assert list(_buttons(failed)) == [blocks.RETRY, blocks.STOP, blocks.DRY_RUN]
    assert _buttons(failed)[blocks.RETRY]["text"]["text"] == "Retry step" and "helm: boom" in json.dumps(failed)
    _, interrupted = blocks.warning(_incident(state="halted", halt_kind="interrupted", resume_from=2),
                                    approvers=["U0A"], confirm="dialog")
    assert _buttons(interrupted)[blocks.RETRY]["text"]["text"] == "Resume" and "before step 3" in json.dumps(interrupted)
    _, auto = blocks.warning(_incident(auto_at=1_800_000_090.0), approvers=["U0A"], confirm="dialog")
    assert list(_buttons(auto))[0] == blocks.STOP and "automatically at" in json.dumps(auto)
    _, stopped = blocks.warning(_incident(), approvers=["U0A"], confirm="dialog")
    assert blocks.STOP not in _buttons(stopped)
