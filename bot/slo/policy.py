"""The policy file: which services the bot watches, their SLOs, who may approve a rollback and how it is done.

Called by `rollback-bot check-policy` (bot.cli) to lint a file, by `serve` at start-up, and by the app when
it (re)loads the policy. load_policy / parse_policy return a frozen Policy or raise PolicyError listing every
problem with its file, line and field, so a broken policy is fixed in one pass. `rollback:` steps are checked
against an executors registry passed through pydantic's validation context ({"registry": Registry}).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
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


class Slo(_Model):
    """A PromQL query and the threshold it must stay on the right side of, for `for_` seconds; or, with
    `burn_rate:` instead of query and threshold, an error-budget burn rate judged by bot.slo.burn."""

    name: str = Field(min_length=1)
    query: str | None = Field(default=None, min_length=1)
    burn_rate: BurnRate | None = None
    above: float | None = Field(default=None, allow_inf_nan=False)
    below: float | None = Field(default=None, allow_inf_nan=False)
    for_: Duration = Field(default=0.0, alias="for")
    # A grouped query: `by` names the label whose value picks this service's series (`match`, default the
    # service's name), so many services sharing one query text cost one Prometheus query per cycle.
    by: LabelName | None = None
    match: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _grouping(self) -> Slo:
        if self.match is not None and self.by is None:
            raise _error_at("Slo", ("match",), self.match, "'match:' needs 'by:', the label it is compared with")
        if self.by is not None and self.burn_rate is not None:
            raise _error_at("Slo", ("by",), self.by, "'by:' groups a 'query:'; a burn-rate SLO cannot use it")
        return self

    @model_validator(mode="after")
    def _one_threshold(self) -> Slo:
        if self.burn_rate is not None:
            mixed = [key for key in ("query", "above", "below") if getattr(self, key) is not None]
            if mixed:
                raise _error_at("Slo", (mixed[0],), getattr(self, mixed[0]),
                                f"an SLO has either 'burn_rate:' or 'query:' with 'above:'/'below:', not both; "
                                f"drop {', '.join(repr(key + ':') for key in mixed)} or 'burn_rate:'")
            return self
        if self.query is None:
            raise ValueError("set 'query:' with 'above:' or 'below:', or 'burn_rate: {errors, total, objective}'")
        if (self.above is None) == (self.below is None):
            got = "both" if self.above is not None else "neither"
            raise ValueError(
                "set exactly one of 'above:' (breach while value > above) or 'below:' "
                f"(breach while value < below); got {got}"
            )
        return self

    def breached(self, value: float) -> bool:
        """True while `value` is on the wrong side of the threshold. NaN (e.g. no traffic) never breaches."""
        if self.above is not None:
            return value > self.above
        return self.below is not None and value < self.below

    def target_text(self) -> str:
        """The healthy side, for humans: `< 0.25` for `above: 0.25`, `> 0.8` for `below: 0.8`."""
        if self.burn_rate is not None:
            return self.burn_rate.target_text()
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


class Promote(_Model):
    """The auto-promotion gate: move alias `to` onto `from_` after it has been healthy for `healthy_for`."""

    from_: str = Field(default="candidate", alias="from", min_length=1)
    to: str = Field(default="champion", min_length=1)
    healthy_for: Duration = 1800.0
    previous: str = Field(default="previous_champion", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Promote:
        if len({self.from_, self.to, self.previous}) != 3:
            raise ValueError(f"'from', 'to' and 'previous' must be three different aliases, got "
                             f"{self.from_!r}, {self.to!r}, {self.previous!r}")
        return self


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


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file; `line` is 1-based, None when the file has no such line."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyError(Exception):
    """The policy file is unusable; `problems` lists every problem found, in line order."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_policy(path: str | Path, registry: Registry | None = None) -> Policy:
    """Read and validate the policy file at `path`; raise PolicyError on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # missing, unreadable or not UTF-8: a problem like any other
        problem = PolicyProblem(str(path), None, "", f"cannot read the policy file: {exc}")
        raise PolicyError([problem]) from exc
    return parse_policy(text, str(path), registry)


def parse_policy(text: str, filename: str = "<policy>", registry: Registry | None = None) -> Policy:
    """Validate policy YAML `text`; `filename` is only used in problem messages."""
    registry = registry if registry is not None else default_registry()
    data, lines, problems = _read_yaml(text, filename)
    policy = None
    try:
        policy = Policy.model_validate(data, context={"registry": registry})
    except ValidationError as exc:  # turned into problems with file, line and field below
        errors = exc.errors()
        problems += [
            _problem(error, data, lines, filename, registry)
            for error in errors
            # "at least 1 item after validation" only repeats the errors of the items themselves
            if error["type"] != "too_short" or not any(_below(other["loc"], error["loc"]) for other in errors)
        ]
    if problems or policy is None:
        raise PolicyError(sorted(problems, key=lambda problem: problem.line or 0))
    return policy


def _below(loc: tuple[Any, ...], parent: tuple[Any, ...]) -> bool:
    return len(loc) > len(parent) and loc[: len(parent)] == parent


def _field_text(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _read_yaml(text: str, filename: str) -> tuple[dict[Any, Any], dict[KeyPath, int], list[PolicyProblem]]:
    """Plain data from YAML, the line of every mapping key and sequence item by path, and duplicate keys.

    Raises PolicyError for what leaves nothing to validate: a syntax error, an empty file, a top level that
    is not a mapping.
    """
    lines: dict[KeyPath, int] = {}
    problems: list[PolicyProblem] = []
    loader = yaml.SafeLoader(text)

    def problem(line: int | None, path: KeyPath, message: str) -> None:
        problems.append(PolicyProblem(filename, line, _field_text(path), message))

    def scalar(node: yaml.Node, path: KeyPath) -> Any:
        try:
            return loader.construct_object(node)
        except ValueError as exc:  # an explicit tag that does not fit, e.g. `!!int abc`
            problem(node.start_mark.line + 1, path, f"invalid value: {exc}")
            return None

    def build(node: yaml.Node, path: KeyPath, stack: frozenset[int]) -> Any:
        if id(node) in stack:
            problem(node.start_mark.line + 1, path, "a YAML alias refers to itself")
            return None
        if isinstance(node, yaml.ScalarNode):
            return scalar(node, path)
        stack = stack | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                items.append(build(item, (*path, index), stack))
            return items
        own = {id(key_node) for key_node, _ in node.value}
        loader.flatten_mapping(node)  # `<<: *defaults` merge keys; later own keys override merged ones
        mapping: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problem(line, path, "a mapping key must be a plain name, not a list or a mapping")
                continue
            key = scalar(key_node, path)
            if id(key_node) in own:
                if key in seen:
                    what = "service" if path == ("services",) else "key"
                    message = f"duplicate {what} {key!r}, also on line {seen[key]}; YAML keeps only this last one"
                    problem(line, (*path, key), message)
                seen[key] = line
            if key in mapping:  # the later value wins, so forget the lines of the one it replaces
                for stale in [known for known in lines if known[: len(path) + 1] == (*path, key)]:
                    del lines[stale]
            lines[(*path, key)] = line
            mapping[key] = build(value_node, (*path, key), stack)
        return mapping

    try:
        node = loader.get_single_node()
        data = None if node is None else build(node, (), frozenset())
    except yaml.YAMLError as exc:  # syntax errors and bad tags end the read: there is no data to validate
        raise PolicyError([_yaml_problem(exc, filename)]) from exc
    finally:
        loader.dispose()
    if data is None:
        raise PolicyError([PolicyProblem(filename, None, "", "the file is empty; a policy needs services:")])
    if not isinstance(data, dict):
        raise PolicyError([PolicyProblem(filename, node.start_mark.line + 1, "",
                                         f"the top level must be a mapping with 'services:', got a "
                                         f"{type(data).__name__}")])
    lines[()] = node.start_mark.line + 1
    return data, lines, problems


def _yaml_problem(exc: yaml.YAMLError, filename: str) -> PolicyProblem:
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return PolicyProblem(filename, None, "", f"invalid YAML: {exc}")
    message = f"invalid YAML: {(exc.problem or '').removeprefix('but ')}"
    if exc.context and exc.context_mark is not None:
        message += f" ({exc.context} on line {exc.context_mark.line + 1})"
    elif exc.context:
        message += f" ({exc.context})"
    return PolicyProblem(filename, mark.line + 1, "", message)


def _field_type(kind: Any, part: str | int) -> Any:
    """The declared type one step below `kind` (a model, dict, tuple or optional) along an error loc."""
    fields = getattr(kind, "model_fields", None) if isinstance(kind, type) else None
    if fields is not None:
        annotation = next((f.annotation for name, f in fields.items() if part in (name, f.alias)), None)
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 and type(None) in get_args(annotation) else annotation  # X | None
    args = [arg for arg in get_args(kind) if arg is not type(None) and arg is not Ellipsis]
    return args[-1] if args else None


def _locate(loc: tuple[str | int, ...], data: Any, registry: Registry) -> tuple[KeyPath, Any, Any]:
    """The file path for a pydantic error loc, the declared type found there and the value as written.

    A rollback step's `executor` / `config` become its one key (`rollback[0].mlflow_alias`), and dict-key
    errors (`[key]`) point at the key itself.
    """
    path: list[str | int] = []
    node: Any = data
    kind: Any = Policy
    for part in loc:
        if part == "[key]":
            continue
        one_key = isinstance(node, dict) and len(node) == 1
        if kind is RollbackStep and part in ("executor", "config") and one_key:
            name = next(iter(node))
            path.append(name)
            node = node[name]
            kind = registry.get(name).config if part == "config" and name in registry else None
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        kind = _field_type(kind, part)
    return tuple(path), kind, node


def _problem(
    error: Any, data: Any, lines: dict[KeyPath, int], filename: str, registry: Registry
) -> PolicyProblem:
    loc = tuple(error["loc"])
    path, _, written = _locate(loc, data, registry)
    line = next(lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines)
    kind = error["type"]
    if kind == "extra_forbidden":
        _, model, _ = _locate(loc[:-1], data, registry)
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        known = [field.alias or name for name, field in (fields or {}).items()]
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = "unknown field" + (f" (did you mean {close[0]!r}?)" if close
                                     else f" (known fields: {', '.join(known)})" if known else "")
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"][:1].lower() + error["msg"][1:]
        if kind != "policy_error" and isinstance(written, (str, int, float)):
            message += f" (got {written!r})"
    return PolicyProblem(filename, line, _field_text(path), message)
