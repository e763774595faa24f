"""SlackOut against the fake Slack Web API: which failures are retried (429 after Retry-After for every call;
5xx only for calls that are safe to repeat) and which come back as SlackError for the timeline to keep."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from bot.slack.slack_out import SlackError, SlackOut, make_client
from sandbox.slack_api import FakeSlackAPI

CHANNEL = "C0MODELSVC"


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@pytest.fixture
def out(slack: FakeSlackAPI) -> SlackOut:
    return SlackOut(make_client("xoxb-test-0000", slack.url))


def test_a_429_is_retried_after_retry_after_for_posts_and_updates(slack: FakeSlackAPI, out: SlackOut) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    ts = out.post(CHANNEL, "hello")
    assert len(slack.messages(CHANNEL)) == 1, "the failed post left nothing"
    posts = slack.calls("chat.postMessage")
    assert len(posts) == 2 and posts[1].at - posts[0].at >= 0.9, "the retry waited for Retry-After"

    slack.fail_next("chat.update", status=429, retry_after=1, times=2)
    out.update(CHANNEL, ts, "edited")
    assert slack.message(CHANNEL, ts)["text"] == "edited" and len(slack.calls("chat.update")) == 3


def test_a_5xx_is_retried_for_an_update_but_never_for_a_post(slack: FakeSlackAPI, out: SlackOut) -> None:
    ts = out.post(CHANNEL, "hello")
    slack.fail_next("chat.update", status=503)
    out.update(CHANNEL, ts, "edited")
    assert slack.message(CHANNEL, ts)["text"] == "edited" and len(slack.calls("chat.update")) == 2

    slack.fail_next("chat.postMessage", status=500)
    with pytest.raises(SlackError, match="chat.postMessage"):
        out.post(CHANNEL, "maybe twice")
    assert len(slack.calls("chat.postMessage")) == 2, "one post, one failed attempt, no retry"
    assert len(slack.messages(CHANNEL)) == 1, "the failed post left nothing"


def test_slack_errors_name_the_method_and_the_error(slack: FakeSlackAPI, out: SlackOut) -> None:
    slack.fail_next("chat.postMessage", error="channel_not_found")
    with pytest.raises(SlackError, match="chat.postMessage: channel_not_found"):
        out.post(CHANNEL, "x")


def test_an_edit_being_retried_holds_the_next_edit_of_its_incident(slack: FakeSlackAPI, out: SlackOut) -> None:
    """bot.slack.timeline's limiter: while one chat.update is still being sent (slack_sdk waits out a 429's Retry-After
    inside the call), the incident's next edit waits for it, then for `update_every`: two accepted edits
    never land together (benchmark 5 saw two 0.16 s apart)."""
    from bot.slack.timeline import Timeline

    timeline = Timeline(None, out, lambda _: None, update_every=0.5)  # type: ignore[arg-type]  # edits only
    ts = out.post(CHANNEL, "warning")
    slack.fail_next("chat.update", status=429, retry_after=2, times=1)
    threading.Thread(target=timeline.edit, args=(1, CHANNEL, ts, "first edit", [])).start()
    time.sleep(0.8)  # past update_every since the first edit started, while it still waits out Retry-After
    timeline.edit(1, CHANNEL, ts, "second edit", [])
    deadline = time.monotonic() + 10
    while slack.message(CHANNEL, ts)["text"] != "second edit" and time.monotonic() < deadline:
        time.sleep(0.05)
    updates = slack.calls("chat.update")
    assert [c.params["text"] for c in updates] == ["first edit", "first edit", "second edit"]
    assert updates[2].at - updates[1].at >= 0.45, "the second edit went out while the first was still being sent"
