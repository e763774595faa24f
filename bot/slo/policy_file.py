"""Reading a policy file: load_policy / parse_policy return a frozen Policy (bot.slo.policy) or raise PolicyError
listing every problem with its file, line and field, so a broken policy is fixed in one pass.

Called by `rollback-bot check-policy` (bot.cli) to lint a file, by `serve` at start-up, and by tests. YAML is read
with the line of every key kept, so each pydantic error is reported at the line a person wrote; a misspelt key
gets the closest known one suggested.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import multiprocessing
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from bot.slo.policy import KeyPath, Policy, RollbackStep
from executors.registry import Registry, default_registry

# libyaml's parser when PyYAML has it (its wheels do): ten times faster than the pure-Python one on a policy of
# thousands of services, with the same nodes and line marks.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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


def load_policy_in_child(path: str | Path) -> Policy:
    """load_policy in a forked child process, which sends back the validated policy (pickled) or its problems and
    exits. `serve` reads its policy this way: the memory the reading takes (YAML nodes, plain data, the line of every
    key: about 200 MB for 10,000 services, ten times what the policy itself keeps) goes back to the system with the
    child instead of staying in the server's heap. Where fork is not available it reads in this process."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return load_policy(path)
    ours, theirs = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_read_for_parent, args=(str(path), theirs),
                                                        name="read-policy", daemon=True)
    child.start()
    theirs.close()
    try:
        kind, payload = ours.recv()
    except EOFError:
        child.join()
        raise PolicyError([PolicyProblem(str(path), None, "", f"reading the policy failed (the reader exited "
                                                             f"with {child.exitcode})")]) from None
    finally:
        ours.close()
    child.join()
    if kind == "problems":
        raise PolicyError([PolicyProblem(*problem) for problem in payload])
    policy: Policy = pickle.loads(payload)
    return policy


def _read_for_parent(path: str, conn: Any) -> None:
    try:
        conn.send(("policy", pickle.dumps(load_policy(path), protocol=pickle.HIGHEST_PROTOCOL)))
    except PolicyError as exc:
        conn.send(("problems", [(p.file, p.line, p.field, p.message) for p in exc.problems]))
    finally:
        conn.close()


def parse_policy(text: str, filename: str = "<policy>", registry: Registry | None = None) -> Policy:
    """Validate policy YAML `text`; `filename` is only used in problem messages."""
    registry = registry if registry is not None else default_registry()
    policy: Policy | None = None
    errors: list[Any] | None = None
    with _collector_paused():
        data, lines, problems = _read_yaml(text, filename)
        try:
            policy = Policy.model_validate(data, context={"registry": registry})
        except ValidationError as exc:  # turned into problems with file, line and field below
            errors = exc.errors()
    if errors is not None:
        problems += [
            _problem(error, data, lines, filename, registry)
            for error in errors
            # "at least 1 item after validation" only repeats the errors of the items themselves
            if error["type"] != "too_short" or not any(_below(other["loc"], error["loc"]) for other in errors)
        ]
    if problems or policy is None:
        raise PolicyError(sorted(problems, key=lambda problem: problem.line or 0))
    return policy


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a policy is read: the YAML nodes and the models are hundreds of
    thousands of new objects for thousands of services, each allocation burst would start a full collection of an
    ever larger heap (a 10,000-service file took 7 s to read with it on, 1.5 s with it off). Nothing read here
    forms a cycle that must be freed meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _below(loc: tuple[Any, ...], parent: tuple[Any, ...]) -> bool:
    return len(loc) > len(parent) and loc[: len(parent)] == parent


def _field_text(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _read_yaml(text: str, filename: str, parser: type[Any] = LOADER,
               ) -> tuple[dict[Any, Any], dict[KeyPath, int], list[PolicyProblem]]:
    """Plain data from YAML, the line of every mapping key and sequence item by path, and duplicate keys.

    Raises PolicyError for what leaves nothing to validate: a syntax error, an empty file, a top level that
    is not a mapping.
    """
    lines: dict[KeyPath, int] = {}
    problems: list[PolicyProblem] = []
    loader = parser(text)

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
        if parser is not yaml.SafeLoader:  # the pure-Python parser says what is wrong in more words, and where
            return _read_yaml(text, filename, yaml.SafeLoader)
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
