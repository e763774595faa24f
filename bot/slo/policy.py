"""The policy model: which services the bot watches, their SLOs, who may approve a rollback and how it is done.

Frozen pydantic models, validated by bot.slo.policy_file (which reads the YAML and turns errors into problems
with file, line and field). `rollback:` steps are checked against an executors registry passed through
pydantic's validation context ({"registry": Registry}).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from bot.slo.durations import format_duration, parse_duration
from bot.slo.percent import format_percent, parse_percent
from executors.registry import Registry, default_registry

KeyPath = tuple[str | int, ...]


def _matching(pattern: str, expected: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; the policy file may write `15s`, `5m`, `1h30m`, `500ms` or a bare number of seconds."""
Percent = Annotated[float, BeforeValidator(parse_percent)]
"""A fraction; the policy file writes `3%` (0.03)."""
ChannelId = Annotated[str, _matching(r"[CG][A-Z0-9]{2,}", "a Slack channel ID like C0123456789, not a #name")]
ApproverId = Annotated[
    str, _matching(r"[UWS][A-Z0-9]{2,}", "a Slack user ID (U..., W...) or user-group ID (S...)")
]
ServiceName = Annotated[
    str,
    _matching(
        r"[a-z0-9][a-z0-9_.-]{0,62}",
        "a service name of lowercase letters, digits, '-', '_', '.' (at most 63 characters)",
    ),
]

LabelName = Annotated[
    str, _matching(r"[a-zA-Z_][a-zA-Z0-9_]*", "a Prometheus label name (letters, digits, '_', not starting with a digit)")
]


def _error_at(title: str, loc: KeyPath, value: Any, message: str) -> ValidationError:
    """A validation error pointing below the field being validated (e.g. at slos[2].name)."""
    error = PydanticCustomError("policy_error", message)
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=loc, input=value)])


def _registry(info: ValidationInfo) -> Registry:
    registry = (info.context or {}).get("registry")
    return registry if registry is not None else default_registry()


def _number(value: float) -> str:
    return f"{value:.12g}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_SELECTOR = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*\s*(\{.*\})?|\{.*\}", re.DOTALL)


class BurnWindow(_Model):
    """One multi-window pair: breach while the error ratio over BOTH windows exceeds `factor` x the budget."""

    long: Duration = Field(gt=0)
    short: Duration = Field(gt=0)
    factor: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnWindow:
        if self.short >= self.long:
            raise ValueError(f"short ({format_duration(self.short)}) must be shorter than long "
                             f"({format_duration(self.long)})")
        return self

    def target_text(self) -> str:
        """`burn < 14.4x (1h & 5m)`."""
        return f"burn < {_number(self.factor)}x ({format_duration(self.long)} & {format_duration(self.short)})"


# The SRE workbook's paging pairs: 2% of a 30-day budget in 1h, 5% in 6h.
DEFAULT_BURN_WINDOWS = (BurnWindow(long=3600, short=300, factor=14.4), BurnWindow(long=21600, short=1800, factor=6))


class BurnRate(_Model):
    """An error-budget SLO: `errors` and `total` are counter selectors, `objective` the share of good events."""

    errors: str = Field(min_length=1)
    total: str = Field(min_length=1)
    objective: float
    windows: tuple[BurnWindow, ...] = Field(default=DEFAULT_BURN_WINDOWS, min_length=1)

    @field_validator("errors", "total")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not _SELECTOR.fullmatch(value.strip()):
            raise ValueError(f"expected a counter selector like model_requests_total{{code=\"500\"}}, got "
                             f"{value!r}; the bot applies rate() over each window itself")
        return value.strip()

    @field_validator("objective")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"objective is the share of good events, strictly between 0 and 1 (e.g. 0.999); "
                             f"got {value!r}")
        return value

    def target_text(self) -> str:
        """Every pair's target: `burn < 14.4x (1h & 5m), burn < 6x (6h & 30m)`."""
        return ", ".join(window.target_text() for window in self.windows)


SloKind = Literal["latency", "errors", "throughput", "quality", "other"]


class LiveBaseline(_Model):
    """`baseline: {label: model_version}`: the baseline is the previous champion's own series of the same query at the
    same moment (a canary or shadow share still serving it), told apart by `label`."""

    label: LabelName = "model_version"


RECORDED = "recorded"


def _recorded_is_none(value: Any) -> Any:
    if value == RECORDED or value is None or isinstance(value, (dict, LiveBaseline)):
        return None if value == RECORDED else value
    raise ValueError(f"expected 'recorded' (the default) or {{label: <the label naming the version>}}; got {value!r}")
_THRESHOLDS = ("above", "below", "above_baseline", "below_baseline")


class Slo(_Model):
    """A PromQL query and the threshold it must stay on the right side of, for `for_` seconds; or, with
    `burn_rate:` instead of query and threshold, an error-budget burn rate judged by bot.slo.burn.

    The threshold is absolute (`above:` / `below:` a number) or relative to a baseline (`above_baseline:` /
    `below_baseline:` a share such as `3%`, with an optional absolute floor `min_delta:`): the value the outgoing
    champion had, recorded at each promotion (`baseline: recorded`, bot.slo.baselines), or the previous champion's
    series at the same moment (`baseline: {label: model_version}`).

    `kind` says what the SLO watches, for readiness (bot.incidents.readiness wants a quality SLO and a latency or
    errors one); a burn-rate SLO counts errors unless it says otherwise."""

    name: str = Field(min_length=1)
    kind: SloKind = "other"
    query: str | None = Field(default=None, min_length=1)
    burn_rate: BurnRate | None = None
    above: float | None = Field(default=None, allow_inf_nan=False)
    below: float | None = Field(default=None, allow_inf_nan=False)
    above_baseline: Percent | None = None
    below_baseline: Percent | None = None
    min_delta: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    # None is `baseline: recorded` (the default): recorded at each promotion.
    baseline: Annotated[LiveBaseline | None, BeforeValidator(_recorded_is_none)] = None
    for_: Duration = Field(default=0.0, alias="for")
    # A grouped query: `by` names the label whose value picks this service's series (`match`, default the
    # service's name), so many services sharing one query text cost one Prometheus query per cycle.
    by: LabelName | None = None
    match: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _burn_rate_counts_errors(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("burn_rate") is not None and "kind" not in data:
            return {**data, "kind": "errors"}
        return data

    @field_validator("below_baseline")
    @classmethod
    def _under_all(cls, share: float | None) -> float | None:
        if share is not None and share >= 1:
            raise ValueError(f"{format_percent(share)} below the baseline is below zero; use a share under 100%")
        return share

    @model_validator(mode="after")
    def _grouping(self) -> Slo:
        if self.match is not None and self.by is None:
            raise _error_at("Slo", ("match",), self.match, "'match:' needs 'by:', the label it is compared with")
        if self.by is not None and self.burn_rate is not None:
            raise _error_at("Slo", ("by",), self.by, "'by:' groups a 'query:'; a burn-rate SLO cannot use it")
        if self.by is not None and self.live_label is not None:
            raise _error_at("Slo", ("by",), self.by, "a live baseline reads every version's series of the query "
                                                      "itself; drop 'by:' or use 'baseline: recorded'")
        return self

    @model_validator(mode="after")
    def _one_threshold(self) -> Slo:
        given = [key for key in _THRESHOLDS if getattr(self, key) is not None]
        if self.burn_rate is not None:
            mixed = [key for key in ("query", *_THRESHOLDS) if getattr(self, key) is not None]
            if mixed:
                raise _error_at("Slo", (mixed[0],), getattr(self, mixed[0]),
                                f"an SLO has either 'burn_rate:' or 'query:' with 'above:'/'below:', not both; "
                                f"drop {', '.join(repr(key + ':') for key in mixed)} or 'burn_rate:'")
        elif self.query is None:
            raise ValueError("set 'query:' with 'above:' or 'below:', or 'burn_rate: {errors, total, objective}'")
        elif len(given) != 1:
            got = "neither" if not given else ("both" if set(given) == {"above", "below"}
                                               else " and ".join(repr(key + ":") for key in given))
            raise ValueError(
                "set exactly one of 'above:' (breach while value > above) or 'below:' "
                f"(breach while value < below); got {got}. For a threshold relative to a baseline set one of "
                "'above_baseline:' or 'below_baseline:' (a share, e.g. 3%) instead"
            )
        if not self.relative:
            extra = [key for key in ("min_delta", "baseline") if key in self.model_fields_set]
            if extra:
                raise _error_at("Slo", (extra[0],), str(getattr(self, extra[0])),
                                f"'{extra[0]}:' is for a threshold relative to a baseline; set 'above_baseline:' or "
                                f"'below_baseline:' (e.g. 3%)")
        return self

    @property
    def relative(self) -> bool:
        """Whether the threshold is relative to a baseline (`above_baseline:` / `below_baseline:`)."""
        return self.above_baseline is not None or self.below_baseline is not None

    @property
    def higher_is_better(self) -> bool:
        """The healthy direction: a `below`-style SLO (AUC) breaches low, an `above`-style one (latency) high."""
        return self.below is not None or self.below_baseline is not None

    @property
    def live_label(self) -> str | None:
        """The label telling the versions' series apart, for a live baseline; None for a recorded one."""
        return self.baseline.label if self.baseline is not None and self.relative else None

    def breached(self, value: float) -> bool:
        """True while `value` is on the wrong side of the threshold. NaN (e.g. no traffic) never breaches. A
        relative SLO is judged by `breached_against` instead."""
        if self.above is not None:
            return value > self.above
        return self.below is not None and value < self.below

    def breached_against(self, value: float, baseline: float) -> bool:
        """A relative SLO: True while `value` is worse than `baseline` by more than the allowed share of it (and by
        more than `min_delta`)."""
        if math.isnan(value) or math.isnan(baseline):
            return False
        worse = (baseline - value) if self.higher_is_better else (value - baseline)
        share = self.below_baseline if self.higher_is_better else self.above_baseline
        allowed = abs(baseline) * (share or 0.0)
        return worse > allowed and worse > (self.min_delta or 0.0)

    def allowed_text(self) -> str:
        """The allowed change for a relative SLO, signed as the warning shows it: `−3%`, `+10%`."""
        if self.below_baseline is not None:
            return f"−{format_percent(self.below_baseline)}"
        return f"+{format_percent(self.above_baseline or 0.0)}"

    def target_text(self) -> str:
        """The healthy side, for humans: `< 0.25` for `above: 0.25`, `> 0.8` for `below: 0.8`; for a relative SLO
        `allowed −3% vs the recorded baseline`."""
        if self.burn_rate is not None:
            return self.burn_rate.target_text()
        if self.relative:
            source = (f"the previous champion's series (by {self.live_label})" if self.live_label
                      else "the baseline recorded at each promotion")
            floor = f" (breach only beyond {_number(self.min_delta)})" if self.min_delta else ""
            return f"allowed {self.allowed_text()} vs {source}{floor}"
        if self.above is not None:
            return f"< {_number(self.above)}"
        return f"> {_number(self.below or 0.0)}"


class Verify(_Model):
    """After a rollback: check every `every` seconds; healthy for `stable_for` in a row within `within`."""

    every: Duration = Field(default=15.0, gt=0)
    within: Duration = Field(default=300.0, gt=0)
    stable_for: Duration = 60.0
    # A PromQL query for work queued behind the bad version (e.g. a retry queue); the checklist says
    # "backlog drained" once it is at or below backlog_max.
    backlog: str | None = Field(default=None, min_length=1)
    backlog_max: float = Field(default=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fits(self) -> Verify:
        if self.stable_for > self.within:
            raise ValueError(
                f"stable_for ({format_duration(self.stable_for)}) must not be longer than "
                f"within ({format_duration(self.within)})"
            )
        return self


class Compare(_Model):
    """`promote.compare`: promote only when the candidate is not significantly worse than the champion on each of
    `slos` over the soak window (Mann-Whitney U, one-sided at `confidence`; bot.slo.compare), their series told apart
    by `label`, with at least `min_samples` samples per version."""

    slos: tuple[str, ...] = Field(min_length=1)
    label: LabelName = "model_version"
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_samples: int = Field(default=10, ge=3)

    def text(self, champion: str = "champion") -> str:
        """"not significantly worse than @champion on auc-by-version (Mann-Whitney U, one-sided at 95%, at least 10
        samples per version by model_version)"."""
        return (f"not significantly worse than @{champion} on {', '.join(self.slos)} (Mann-Whitney U, one-sided at "
                f"{format_percent(self.confidence)}, at least {self.min_samples} samples per version by {self.label})")


class Promote(_Model):
    """The auto-promotion gate: move alias `to` onto `from_` after it has been healthy for `healthy_for` (and, with
    `compare`, is not significantly worse than the champion over that window)."""

    from_: str = Field(default="candidate", alias="from", min_length=1)
    to: str = Field(default="champion", min_length=1)
    healthy_for: Duration = 1800.0
    previous: str = Field(default="previous_champion", min_length=1)
    compare: Compare | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Promote:
        if len({self.from_, self.to, self.previous}) != 3:
            raise ValueError(f"'from', 'to' and 'previous' must be three different aliases, got "
                             f"{self.from_!r}, {self.to!r}, {self.previous!r}")
        return self


class FreezeWindow(_Model):
    """A change freeze: from every time `cron` matches (UTC), for `duration`, the gate promotes nothing
    (bot.slo.windows). Rollbacks stay allowed."""

    cron: str = Field(min_length=1)
    duration: Duration = Field(gt=0)
    reason: str = Field(default="change freeze", min_length=1, max_length=200)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        text = " ".join(value.split())
        if len(text.split()) != 5 or not croniter.is_valid(text):
            raise ValueError(f"expected a cron expression of five fields (minute hour day month weekday, in UTC), "
                             f"e.g. '0 17 * * FRI'; got {value!r}")
        return text


class Targets(_Model):
    """What the service promises after a breach: `recover`, alert to stable (null: no target)."""

    recover: Duration | None = Field(default=300.0, gt=0)


class RollbackStep(_Model):
    """One `rollback:` item `{executor_name: {args}}`; `config` is that executor's own config model."""

    executor: str
    config: SerializeAsAny[BaseModel]

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, data: Any) -> Any:
        if isinstance(data, RollbackStep) or (isinstance(data, dict) and set(data) == {"executor", "config"}):
            return data  # built in Python: RollbackStep(executor=..., config=...)
        if not isinstance(data, dict) or len(data) != 1:
            raise ValueError(
                "a rollback step is a mapping with exactly one key, {executor_name: {args}}, "
                "e.g. `- mlflow_alias: {model: recommender}`"
            )
        ((name, args),) = data.items()
        return {"executor": name, "config": {} if args is None else args}

    @field_validator("executor")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        registry = _registry(info)
        if name not in registry:
            raise ValueError(f"unknown executor {name!r}; known executors: {', '.join(registry.names())}")
        return name

    @field_validator("config", mode="plain")
    @classmethod
    def _config(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.data.get("executor")
        if name is None:
            return value  # the executor name failed, so the step fails with that error alone
        config_type = _registry(info).get(name).config
        if isinstance(value, config_type):
            return value
        return config_type.model_validate(value, context=info.context)


class Drill(_Model):
    """Rollback drills (bot.incidents.drills): after each promotion (`on_promotion`, default on when `promote:` is
    set) the whole rollback plan is dry-run against the new release. With `rollback:` (a staging plan) a drill runs
    that plan for real, verifies `slos` (default the service's) per `verify`, and with `restore` rolls staging
    forward again."""

    on_promotion: bool | None = None
    rollback: tuple[RollbackStep, ...] | None = Field(default=None, min_length=1)
    verify: Verify = Verify()
    slos: tuple[Slo, ...] | None = Field(default=None, min_length=1)
    restore: bool = False

    @model_validator(mode="after")
    def _staging_only(self) -> Drill:
        if self.rollback is None:
            given = [key for key in ("verify", "slos", "restore") if key in self.model_fields_set]
            if given:
                raise _error_at("Drill", (given[0],), getattr(self, given[0]),
                                f"'{given[0]}:' is for a staging drill; add 'rollback:', the staging plan it runs")
        return self

    @model_validator(mode="after")
    def _restore_targets(self, info: ValidationInfo) -> Drill:
        if not self.restore or not self.rollback:
            return self
        restorable = _registry(info).restorable()
        for index, step in enumerate(self.rollback):
            if step.executor not in restorable:
                raise _error_at("Drill", ("rollback", index), step.executor,
                                f"'restore: true' moves each step back to where it was, which {step.executor} "
                                f"cannot do; restorable steps: {', '.join(restorable)}")
        return self


class Escalate(_Model):
    """`escalate:`: when no approver has acted `after` the warning was posted, mention the approvers again in the
    thread and, with `pagerduty`, trigger a PagerDuty event (bot.incidents.escalation)."""

    after: Duration = Field(default=600.0, gt=0)
    pagerduty: bool = False


class Service(_Model):
    """One watched service; `name` is its key under `services:`."""

    name: str
    channel: ChannelId
    approvers: tuple[ApproverId, ...] = Field(min_length=1)
    confirm: Literal["dialog", "typed"] = "dialog"
    two_person: bool = False  # whoever requested the rollback cannot also approve it
    auto_rollback: bool = False  # run the plan by itself after the grace period unless an approver stops it
    auto_rollback_grace: Duration = Field(default=60.0, ge=0)
    model: str = Field(min_length=1)
    slos: tuple[Slo, ...] = Field(min_length=1)
    rollback: tuple[RollbackStep, ...] = Field(min_length=1)
    verify: Verify = Verify()
    promote: Promote | None = None
    targets: Targets = Targets()
    drill: Drill = Drill()
    freeze_windows: tuple[FreezeWindow, ...] = ()
    escalate: Escalate | None = None

    @property
    def drills_on_promotion(self) -> bool:
        """Whether each promotion is followed by a drill: `drill.on_promotion`, by default when `promote:` is set."""
        if self.drill.on_promotion is not None:
            return self.drill.on_promotion and self.promote is not None
        return self.promote is not None

    @model_validator(mode="after")
    def _compared_slos(self) -> Service:
        compare = self.promote.compare if self.promote else None
        if compare is None:
            return self
        slos = {slo.name: slo for slo in self.slos}
        for index, name in enumerate(compare.slos):
            slo = slos.get(name)
            if slo is None:
                raise _error_at("Service", ("promote", "compare", "slos", index), name,
                                f"no SLO named {name!r}; this service's SLOs: {', '.join(slos)}")
            if slo.burn_rate is not None:
                raise _error_at("Service", ("promote", "compare", "slos", index), name,
                                f"{name!r} is a burn-rate SLO; the comparison reads a 'query:' SLO's series per "
                                f"version")
        return self

    @field_validator("slos")
    @classmethod
    def _unique_names(cls, slos: tuple[Slo, ...]) -> tuple[Slo, ...]:
        seen: set[str] = set()
        for index, slo in enumerate(slos):
            if slo.name in seen:
                message = f"another SLO is already named {slo.name!r}"
                raise _error_at("Service", (index, "name"), slo.name, message)
            seen.add(slo.name)
        return slos


class Policy(_Model):
    """The whole policy file: how often to evaluate SLOs, and the services by name."""

    evaluate_every: Duration = Field(default=15.0, gt=0)
    # Who may freeze and unfreeze every service at once (`/rollback freeze --all`); nobody when empty.
    admins: tuple[ApproverId, ...] = ()
    freeze_windows: tuple[FreezeWindow, ...] = ()  # for every service, besides each service's own
    services: dict[ServiceName, Service] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _name_services(cls, data: Any) -> Any:
        services = data.get("services") if isinstance(data, dict) else None
        if isinstance(services, dict):
            named = {key: {"name": key, **value} if isinstance(value, dict) else value
                     for key, value in services.items()}
            data = {**data, "services": named}
        return data

    @field_validator("services")
    @classmethod
    def _names_match_keys(cls, services: dict[str, Service]) -> dict[str, Service]:
        for key, service in services.items():
            if service.name != key:
                raise _error_at("Policy", (key, "name"), service.name,
                                f"a service's name is its key; drop 'name:' or make it {key!r}")
        return services
