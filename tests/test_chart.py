"""Tests for bot/slack/chart.py: the incident chart drawn from a real Prometheus scraping the simulated model
service, and uploaded with files_upload_v2 into the incident's thread on the fake Slack Web API.

One Prometheus + simulator pair serves the module: the simulator serves a slow version (p95 over the
threshold), then the fast one, and the incidents here carry breach / approval / execution / recovery times
inside that stretch, as a real incident would.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image

from bot.infra.prom import Prometheus, RangeResult
from bot.infra.store import Incident, Store
from bot.slack import chart
from bot.slack.slack_out import SlackOut, make_client
from bot.slo.policy import Service
from bot.slo.policy_file import parse_policy
from sandbox.model_service import ModelServiceSimulator, VersionProfile
from sandbox.servers import PrometheusServer, free_port
from sandbox.slack_api import FakeSlackAPI

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNEL = "C0MODELSVC"
P95 = 'histogram_quantile(0.95, sum by (le) (rate(model_request_latency_seconds_bucket{service="model-svc"}[5s])))'
POLICY = f"""
services:
  model-svc:
    channel: {CHANNEL}
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - name: p95-latency
        query: '{P95}'
        above: 0.25
      - name: auc
        query: 'min(model_auc{{service="model-svc"}})'
        below: 0.8
    rollback:
      - mlflow_alias: {{model: recommender}}
  burn-svc:
    channel: {CHANNEL}
    approvers: [U0APPROVER]
    model: recommender
    slos:
      - name: errors
        burn_rate:
          errors: 'model_requests_total{{service="model-svc",code="500"}}'
          total: 'model_requests_total{{service="model-svc"}}'
          objective: 0.99
          windows: [{{long: 10s, short: 5s, factor: 2}}]
    rollback:
      - mlflow_alias: {{model: recommender}}
"""


class Stretch:
    """Times of the stretch the simulator lived through: slow (breaching) from `slow_at`, fast from `fast_at`."""

    def __init__(self) -> None:
        self.slow_at = self.fast_at = self.end = 0.0


@pytest.fixture(scope="module")
def prom_stretch(tmp_path_factory: pytest.TempPathFactory, prometheus_bin: str) -> Iterator[tuple[str, Stretch]]:
    """A real Prometheus that has scraped ~6 s of v2 (slow, low AUC) followed by ~6 s of v1 (healthy)."""
    served = {"version": "2"}
    simulator = ModelServiceSimulator(
        "model-svc", champion=lambda: served["version"], default=VersionProfile(latency_seconds=0.4),
        profiles={"1": VersionProfile(latency_seconds=0.05, auc=0.92), "2": VersionProfile(0.4, error_rate=0.2, auc=0.7)})
    times = Stretch()
    with simulator, PrometheusServer(tmp_path_factory.mktemp("prom"), [simulator.target], "1s",
                                     binary=prometheus_bin) as prometheus:
        prometheus.wait_for_series(f"({P95}) > 0.25")
        times.slow_at = time.time()
        time.sleep(6)
        served["version"] = "1"
        times.fast_at = time.time()
        prometheus.wait_for_series(f"({P95}) < 0.25")
        time.sleep(3)
        times.end = time.time()
        yield prometheus.url, times


@pytest.fixture
def service() -> Service:
    return parse_policy(POLICY).services["model-svc"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'bot.db'}")
    yield s
    s.engine.dispose()


@pytest.fixture
def slack() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


def incident_in(store: Store, times: Stretch, **values: Any) -> Incident:
    """A recovered incident whose breach, approval, execution and recovery fall inside the stretch."""
    opened = store.open_incident(service="model-svc", trigger="p95-latency", detail={}, baseline={},
                                 breach_started_at=times.slow_at, channel=CHANNEL)
    assert opened is not None
    defaults: dict[str, Any] = dict(
        state="recovered", active_service=None, warned_at=times.slow_at + 1, approved_at=times.slow_at + 3,
        executed_at=times.fast_at, recovered_at=times.end, finished_at=times.end)
    return store.update_incident(opened.id, **{**defaults, **values})


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) decoded by matplotlib's PNG reader, which fails on a broken file."""
    pixels = image.imread(io.BytesIO(png), format="png")
    return int(pixels.shape[1]), int(pixels.shape[0])


# -- drawing -------------------------------------------------------------------------------------------------
def test_chart_of_an_incident_is_a_png_with_one_panel_per_slo(
    prom_stretch: tuple[str, Stretch], store: Store, service: Service
) -> None:
    url, times = prom_stretch
    incident = incident_in(store, times)
    prom = Prometheus(url)

    png = chart.render(prom, incident, service)

    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 20_000  # two panels of lines, labels and markers, not a blank image
    width, height = png_size(png)
    assert width == 1000  # figsize 10 in at 100 dpi
    assert height == round((2.6 * 2 + 0.6) * 100)  # one 2.6 in panel per SLO plus the title
    start, end = chart.window(incident, time.time())
    assert start < times.slow_at and end >= times.end
    [p95, auc] = chart.fetch(prom, service, start, end)
    assert (p95.slo.name, p95.threshold, auc.slo.name, auc.threshold) == ("p95-latency", 0.25, "auc", 0.8)
    p95_values = [v for _, result in p95.lines for s in result.series for _, v in s.points]
    assert max(p95_values) > 0.25 > min(p95_values)  # the line crosses the threshold both ways
    assert {round(v, 2) for _, result in auc.lines for s in result.series for _, v in s.points} >= {0.7, 0.92}


def test_markers_name_each_moment_the_incident_went_through(prom_stretch: tuple[str, Stretch], store: Store) -> None:
    _, times = prom_stretch
    full = incident_in(store, times)
    assert [(label, at) for label, at, _ in chart.markers(full)] == [
        ("breach", times.slow_at), ("approved", times.slow_at + 3), ("executed", times.fast_at),
        ("recovered", times.end)]
    dismissed = store.update_incident(full.id, approved_at=None, executed_at=None, recovered_at=None)
    assert [label for label, _, _ in chart.markers(dismissed)] == ["breach"]


def test_an_unfinished_incident_is_drawn_until_now(prom_stretch: tuple[str, Stretch], store: Store,
                                                   service: Service) -> None:
    url, times = prom_stretch
    incident = incident_in(store, times, state="verifying", recovered_at=None, finished_at=None)
    now = times.end + 2
    start, end = chart.window(incident, now)
    assert start <= times.slow_at - chart.LEAD_SECONDS and end >= now
    assert png_size(chart.render(Prometheus(url), incident, service, now=now))[0] == 1000


def test_a_burn_rate_slo_is_drawn_as_its_burn_rate_against_the_factor(
    prom_stretch: tuple[str, Stretch], store: Store
) -> None:
    url, times = prom_stretch
    burn_svc = parse_policy(POLICY).services["burn-svc"]
    incident = incident_in(store, times)
    start, end = chart.window(incident, time.time())

    [panel] = chart.fetch(Prometheus(url), burn_svc, start, end)

    assert panel.threshold == 2 and [name for name, _ in panel.lines] == ["burn rate over 10s", "burn rate over 5s"]
    short = [v for s in panel.lines[1][1].series for _, v in s.points]
    assert max(short) > 2 and min(short) < 2  # 20% errors burn 20x a 1% budget; v1 burns none
    png = chart.render(Prometheus(url), incident, burn_svc)
    assert png.startswith(PNG_SIGNATURE) and png_size(png) == (1000, round((2.6 + 0.6) * 100))


# -- uploading -----------------------------------------------------------------------------------------------
def test_post_chart_uploads_the_png_into_the_incident_thread(
    prom_stretch: tuple[str, Stretch], store: Store, service: Service, slack: FakeSlackAPI
) -> None:
    url, times = prom_stretch
    out = SlackOut(make_client("xoxb-chart-test", slack.url))
    parent_ts = out.post(CHANNEL, "warning")
    incident = incident_in(store, times, message_ts=parent_ts)

    assert chart.post_chart(Prometheus(url), out, incident, service) is None

    [upload] = slack.uploads()
    assert (upload["channel_id"], upload["thread_ts"]) == (CHANNEL, parent_ts)
    assert upload["content"].startswith(PNG_SIGNATURE)
    assert upload["name"] == f"incident-{incident.id}-slos.png"
    assert upload["title"] == f"model-svc SLOs, incident #{incident.id}"
    [share] = slack.thread(CHANNEL, parent_ts)
    assert share["files"][0]["id"] == upload["id"] and share["files"][0]["mimetype"] == "image/png"
    assert [c.method for c in slack.calls()][1:] == ["files.getUploadURLExternal", "files.completeUploadExternal"]
    assert slack.file_content(upload["id"]) == (upload["content"], "image/png")


def test_upload_file_sends_bytes_through_all_three_steps(slack: FakeSlackAPI) -> None:
    out = SlackOut(make_client("xoxb-chart-test", slack.url))
    parent_ts = out.post(CHANNEL, "warning")
    file_id = out.upload_file(CHANNEL, parent_ts, PNG_SIGNATURE + b"rest", "x.png", "X")
    [upload] = slack.uploads()
    assert upload["id"] == file_id and upload["content"] == PNG_SIGNATURE + b"rest"
    [asked] = slack.calls("files.getUploadURLExternal")
    assert (asked.params["filename"], asked.params["length"]) == ("x.png", str(len(PNG_SIGNATURE) + 4))
    [done] = slack.calls("files.completeUploadExternal")
    assert (done.params["channel_id"], done.params["thread_ts"]) == (CHANNEL, parent_ts)


# -- failures ------------------------------------------------------------------------------------------------
def test_prometheus_down_gives_a_clear_error_and_uploads_nothing(
    store: Store, service: Service, slack: FakeSlackAPI
) -> None:
    out = SlackOut(make_client("xoxb-chart-test", slack.url))
    now = time.time()
    times = Stretch()
    times.slow_at, times.fast_at, times.end = now - 60, now - 30, now
    incident = incident_in(store, times, message_ts=out.post(CHANNEL, "warning"))
    down = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=2)

    error = chart.post_chart(down, out, incident, service)

    assert error is not None
    assert error.startswith("Chart not posted: Prometheus range query for SLO p95-latency failed: ConnectionError")
    assert slack.uploads() == [] and slack.calls("files.getUploadURLExternal") == []
    with pytest.raises(chart.ChartError, match="p95-latency"):
        chart.render(down, incident, service)


def test_slack_refusing_the_upload_is_reported_not_raised(
    prom_stretch: tuple[str, Stretch], store: Store, service: Service, slack: FakeSlackAPI
) -> None:
    url, times = prom_stretch
    out = SlackOut(make_client("xoxb-chart-test", slack.url))
    incident = incident_in(store, times, message_ts=out.post(CHANNEL, "warning"))
    slack.fail_next("files.completeUploadExternal", error="not_in_channel")

    error = chart.post_chart(Prometheus(url), out, incident, service)

    assert error == "Chart not posted: files_upload_v2: not_in_channel"
    assert slack.uploads() == []


def test_an_incident_without_a_thread_gets_no_chart(store: Store, service: Service, slack: FakeSlackAPI) -> None:
    now = time.time()
    times = Stretch()
    times.slow_at, times.fast_at, times.end = now - 60, now - 30, now
    incident = incident_in(store, times)  # message_ts never set: the warning was not posted
    out = SlackOut(make_client("xoxb-chart-test", slack.url))

    error = chart.post_chart(Prometheus(f"http://127.0.0.1:{free_port()}"), out, incident, service)

    assert error is not None and "no thread" in error
    assert slack.calls() == []


# -- finding 15: an incident whose breach began days earlier ---------------------------------------------------
class RecordingPrometheus(Prometheus):
    """The real client, recording the step of every range query and the error Prometheus answered, if any."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.ranges: list[tuple[float, float, float, str | None]] = []

    def query_range(self, query: str, start: float, end: float, step: float) -> RangeResult:
        result = super().query_range(query, start, end, step)
        self.ranges.append((start, end, step, result.error))
        return result


def test_finding15_a_breach_two_days_old_is_charted_with_a_whole_second_step(
    prom_stretch: tuple[str, Stretch], store: Store, service: Service, slack: FakeSlackAPI
) -> None:
    """An incident opened from an Alertmanager alert that started two days earlier: the range queries reach the
    real Prometheus with a whole-second step (not `826.063s`, which it rejects), the window starts at most an hour
    before the incident opened and ends a little after recovery, and the PNG reaches the thread."""
    url, times = prom_stretch
    out = SlackOut(make_client("xoxb-chart-test", slack.url))
    incident = incident_in(store, times, breach_started_at=time.time() - 2 * 86400 - 0.123,
                           message_ts=out.post(CHANNEL, "warning"))
    prom = RecordingPrometheus(url)

    assert chart.post_chart(prom, out, incident, service) is None

    assert [error for *_, error in prom.ranges] == [None, None]  # both SLOs' range queries accepted
    for start, end, step, _ in prom.ranges:
        assert step == int(step) and step >= 1 and f"{step:g}s" == f"{int(step)}s"
        assert start >= incident.opened_at - chart.MAX_LOOKBACK_SECONDS
        assert times.end <= end <= times.end + 30
        assert (end - start) / step <= chart.MAX_POINTS
    [upload] = slack.uploads()
    assert upload["content"].startswith(PNG_SIGNATURE) and png_size(upload["content"])[0] == 1000
    [p95, _] = chart.fetch(prom, service, *chart.window(incident, time.time()))
    assert any(s.points for _, result in p95.lines for s in result.series), "the incident's own data is drawn"
