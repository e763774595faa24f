"""The simulated model service's version-labelled quality series (sandbox.model_service): model_quality_auc for the
champion's and the canary's version, read straight from the simulator's /metrics on 127.0.0.1 (no Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sandbox.model_service import ModelServiceSimulator, VersionProfile
from tests.story_env import wait_until

PROFILES = {"5": VersionProfile(latency_seconds=0.05, auc=0.881), "6": VersionProfile(latency_seconds=0.05, auc=0.843),
            "7": VersionProfile(latency_seconds=0.05, auc=0.9)}
DEFAULT = VersionProfile(latency_seconds=0.05, auc=0.5)


class Alias:
    """A mutable stand-in for an MLflow alias read: returns `version`, or raises when `fail` is set."""

    def __init__(self, version: str | None) -> None:
        self.version = version
        self.fail = False

    def __call__(self) -> str | None:
        if self.fail:
            raise ConnectionError("registry unreachable")
        return self.version


def quality(sim: ModelServiceSimulator) -> dict[str, float]:
    """model_quality_auc by model_version, as scraped from the simulator's /metrics now."""
    text = requests.get(sim.url, timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "model_quality_auc":
            for sample in family.samples:
                assert sample.labels["service"] == "model-svc"
                out[sample.labels["model_version"]] = sample.value
    return out


def exactly(sim: ModelServiceSimulator, versions: set[str]) -> dict[str, float] | None:
    """The scraped series when they are exactly `versions`, else None (a wait_until predicate)."""
    now = quality(sim)
    return now if set(now) == versions else None


def scalar(sim: ModelServiceSimulator, name: str) -> float:
    text = requests.get(sim.url, timeout=5).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


@pytest.fixture
def aliases() -> Iterator[tuple[Alias, Alias, ModelServiceSimulator]]:
    champion, canary = Alias("5"), Alias("6")
    with ModelServiceSimulator("model-svc", champion=champion, canary=canary, profiles=PROFILES,
                               default=DEFAULT) as sim:
        yield champion, canary, sim


def test_champion_and_canary_each_export_a_noisy_series_near_their_auc(
    aliases: tuple[Alias, Alias, ModelServiceSimulator],
) -> None:
    _, _, sim = aliases
    assert (sim.version, sim.canary_version) == ("5", "6")
    seen: dict[str, set[float]] = {"5": set(), "6": set()}
    pairs: list[tuple[float, float]] = []

    def varied() -> bool:
        now = quality(sim)
        assert set(now) == {"5", "6"}
        for version, value in now.items():
            assert value == pytest.approx(PROFILES[version].auc, rel=0.005)
            seen[version].add(value)
        pairs.append((now["5"] / PROFILES["5"].auc, now["6"] / PROFILES["6"].auc))
        return all(len(values) >= 3 for values in seen.values())

    wait_until(varied, 10, "model_quality_auc to move with the ticks", interval=0.05)
    # Each version runs at its own phase: the noise factors of the two series are not the same at the same time.
    assert any(a != pytest.approx(b, abs=1e-9) for a, b in pairs)
    # The served-version gauges are untouched: exact profile values, no noise.
    assert scalar(sim, "model_auc") == 0.881


def test_switching_the_canary_removes_the_old_versions_series(
    aliases: tuple[Alias, Alias, ModelServiceSimulator],
) -> None:
    _, canary, sim = aliases
    wait_until(lambda: exactly(sim, {"5", "6"}), 10, "both versions' series")
    canary.version = "7"
    now = wait_until(lambda: exactly(sim, {"5", "7"}), 10, "v7 to replace v6")
    assert now["7"] == pytest.approx(0.9, rel=0.005)
    assert sim.canary_version == "7"
    canary.version = None  # no canary any more: only the champion's series is left
    wait_until(lambda: exactly(sim, {"5"}), 10, "the canary's series to go")
    assert sim.canary_version is None


def test_a_canary_read_that_fails_keeps_the_last_known_canary(
    aliases: tuple[Alias, Alias, ModelServiceSimulator],
) -> None:
    champion, canary, sim = aliases
    canary.fail = True
    wait_until(lambda: isinstance(sim.last_error, ConnectionError), 10, "the failed canary read to be seen")
    assert sim.canary_version == "6"
    assert set(quality(sim)) == {"5", "6"}
    canary.fail = False
    wait_until(lambda: sim.last_error is None, 10, "the next poll to succeed")
    assert set(quality(sim)) == {"5", "6"}


def test_champion_moving_away_removes_its_series_and_champion_equal_to_canary_is_one_series(
    aliases: tuple[Alias, Alias, ModelServiceSimulator],
) -> None:
    champion, _, sim = aliases
    champion.version = "6"  # the canary is promoted: v5 is no longer served at all
    now = wait_until(lambda: exactly(sim, {"6"}), 10, "v5's series to go")
    assert now["6"] == pytest.approx(0.843, rel=0.005)
    assert (sim.version, sim.canary_version) == ("6", "6")
    assert scalar(sim, "model_auc") == 0.843


def test_without_a_canary_only_the_champion_has_a_series() -> None:
    with ModelServiceSimulator("model-svc", champion=lambda: "5", profiles=PROFILES, default=DEFAULT) as sim:
        assert sim.canary_version is None
        now = quality(sim)
        assert set(now) == {"5"}
        assert now["5"] == pytest.approx(0.881, rel=0.005)
