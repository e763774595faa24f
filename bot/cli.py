"""The `rollback-bot` command: serve, check-policy, rules, rbac, readiness, migrate, demo.

Entry point declared in pyproject.toml. Exit codes: 0 ok, 1 runtime failure, 2 bad input (policy or
environment), with a message that names what is wrong. `readiness` exits 1 when a service's way back is not
ready, so a CI pipeline can refuse to ship a release that cannot be rolled back.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING

from bot.infra.config import ConfigError, Settings
from bot.slo.evaluation import grouping_plan
from bot.slo.policy_file import PolicyError, load_policy, load_policy_in_child

if TYPE_CHECKING:
    from bot.incidents.readiness import ReadinessReport
    from bot.slo.policy import Policy, Service


def _read_policy(path: str) -> Policy | None:
    """The policy at `path`, or None after printing every problem (file:line: field: problem) to stderr."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
    except OSError as exc:
        print(f"{path}: {exc.strerror}", file=sys.stderr)
    return None


def _check_policy(args: argparse.Namespace) -> int:
    policy = _read_policy(args.file)
    if policy is None:
        return 2
    names = ", ".join(policy.services)
    print(f"{args.file}: ok — {len(policy.services)} service(s): {names}")
    slo_queries = sum(1 for svc in policy.services.values() for slo in svc.slos
                      if slo.query and slo.by is None and slo.burn_rate is None)
    if slo_queries:
        print(f"grouping: {grouping_plan(policy.services.values()).summary(slo_queries)}")
    for svc in policy.services.values():
        for slo in (s for s in svc.slos if s.relative):
            print(f"{svc.name}/{slo.name}: {slo.target_text()}")
        if svc.promote and svc.promote.compare:
            print(f"{svc.name}: promotes @{svc.promote.from_} only if {svc.promote.compare.text(svc.promote.to)}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from bot.slo import rules

    policy = _read_policy(args.policy)
    if policy is None:
        return 2
    text = rules.render(policy, source=args.policy)
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:  # a directory that does not exist or is not writable: say which file and why
        print(f"{args.out}: cannot write the rules: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"{args.out}: {rules.count(policy)} alerting rule(s) for {len(policy.services)} service(s)")
    return 0


def _rbac(args: argparse.Namespace) -> int:
    """The ServiceAccount, Roles and RoleBindings the policy's steps need (or `--values`: the chart's rbac.roles)."""
    from bot.slo import rbac

    policy = _read_policy(args.policy)
    if policy is None:
        return 2
    try:
        text = (rbac.render_values(policy, source=args.policy) if args.values else
                rbac.render(policy, namespace=args.namespace, name=args.name, source=args.policy))
    except rbac.RbacError as exc:  # a bad --namespace / --name, or a rule that must never be printed
        print(f"rbac: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bot.app import RedactSecrets, build, serve
    from bot.infra import process

    process.fewer_arenas()  # bot.infra.process says why each of these
    process.switch_interval()
    process.quiet_collector()
    try:
        policy = load_policy_in_child(args.policy)
        settings = Settings.from_env()
    except PolicyError as exc:
        print(f"refusing to start: invalid policy\n{exc}", file=sys.stderr)
        return 2
    except (ConfigError, OSError) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    from bot.infra import single_replica

    try:
        single_replica.hold(settings.database_url)  # SQLite: one serve per file, for the life of this process
    except single_replica.AlreadyServing as exc:  # the message names the file and PostgreSQL
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the lock file cannot be made next to the database (no such directory, read-only)
        print(f"refusing to start: cannot lock the SQLite database: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.addFilter(RedactSecrets(settings.secrets()))
    logging.basicConfig(level=logging.INFO, handlers=[handler],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    from bot.infra.migrations import SchemaError

    try:
        runtime = build(settings, policy)
    except SchemaError as exc:  # a database a newer bot migrated: the message names its revision
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    process.freeze_built()
    process.release_free_memory()
    serve(runtime, host=args.host, port=args.port)
    return 0


def _readiness(args: argparse.Namespace) -> int:
    """One line per item and service, then "ready" or "NOT READY: n of m services"; reads MLflow, Prometheus,
    helm, Kubernetes, git and Slack (user groups) from the environment like `serve`, and changes nothing."""
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.service is not None and args.service not in policy.services:
        print(f"unknown service {args.service!r}; known services: {', '.join(policy.services)}", file=sys.stderr)
        return 2
    # Slack is only asked for the members of user groups named as approvers: without a bot token that item
    # fails with the reason instead of the whole command refusing to run.
    token = os.environ.get("SLACK_BOT_TOKEN") or ""
    env = {**os.environ, "SLACK_BOT_TOKEN": token or "unset", "SLACK_SIGNING_SECRET": "not used by readiness"}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"readiness: {exc}", file=sys.stderr)
        return 2
    from bot.infra import redact

    # What is printed may carry a credential (a git URL with a token in an error): redacted like the bot's logs.
    redact.configure(dataclasses.replace(settings, slack_bot_token=token, slack_signing_secret=""), policy)
    services = [policy.services[args.service]] if args.service else list(policy.services.values())
    reports = _readiness_reports(settings, services, has_token=bool(token))
    width = max(len(svc.name) for svc in services)
    for report in reports:
        for item in report.items:
            print(f"{report.service:<{width}}  {item.status:<7}  {item.name:<14}  {redact.redact(item.detail)}")
    not_ready = sum(1 for report in reports if not report.ready)
    print("ready" if not not_ready else f"NOT READY: {not_ready} of {len(reports)} services")
    return 1 if not_ready else 0


def _readiness_reports(settings: Settings, services: list[Service], *, has_token: bool) -> list[ReadinessReport]:
    # MLflow's client retries 7 times with backoff by default; the same fail-fast defaults as bot.app.build.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow import MlflowClient

    from bot.incidents.approvers import Approvers
    from bot.incidents.readiness import Readiness
    from bot.incidents.runner import Runner
    from bot.infra.prom import Prometheus
    from bot.infra.store import Store
    from bot.slack.slack_out import SlackOut, make_client
    from executors.registry import Clients, default_registry

    mlflow = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    slack = SlackOut(make_client(settings.slack_bot_token, settings.slack_api_url))

    def list_group(group: str) -> list[str]:
        if not has_token:
            raise RuntimeError("SLACK_BOT_TOKEN is not set, so the user group's members cannot be read")
        return slack.usergroup_users(group)

    prom = Prometheus(settings.prometheus_url, timeout=5.0)
    # Planning never writes the store (only a run records its steps): an in-memory database serves the Runner.
    runner = Runner(default_registry(), Clients(mlflow=mlflow, helm=settings.helm_bin, workdir=settings.git_workdir),
                    Store("sqlite://"))
    readiness = Readiness(runner=runner, prom=prom, approvers=Approvers(list_group))
    try:
        return [readiness.check(svc) for svc in services]
    finally:
        prom.close()


def _migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from bot.infra import migrations
    from bot.infra.redact import redact_urls, url_secrets

    # The same default as Settings.from_env, without requiring the Slack variables this command does not use.
    url = os.environ.get("DATABASE_URL") or "sqlite:///" + os.path.join(os.getcwd(), "rollback-bot.db")
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # SQLAlchemy's message repeats the whole URL, password included: say it without it
        print("DATABASE_URL is not a SQLAlchemy URL (e.g. postgresql+psycopg://user@host:5432/db)", file=sys.stderr)
        return 2

    def scrub(text: str) -> str:
        for secret in url_secrets(url):
            text = text.replace(secret, "***")
        return redact_urls(text)

    try:
        engine = migrations.engine_for(url)
        try:
            before = migrations.describe(engine)
            done = migrations.upgrade(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, CommandError, ImportError, migrations.SchemaError) as exc:
        # Unreachable server, refused login, a revision this bot does not know, a missing driver: one line
        # naming the database (without its password) instead of a traceback.
        print(f"{shown}: cannot migrate: {scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}",
              file=sys.stderr)
        return 1
    print(f"database: {shown}")
    if done.before == done.after:
        print(f"already at head: {done.after}")
        return 0
    print(f"revision before: {before}" + (f", stamped {done.stamped}" if done.stamped else ""))
    print(f"revision after: {done.after} (head)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sandbox.demo import run_demo

    return run_demo(headless=args.headless, port=args.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rollback-bot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve Slack commands and interactivity over HTTP (or Socket Mode)")
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=_serve)

    p = sub.add_parser("check-policy", help="validate a policy file")
    p.add_argument("file")
    p.set_defaults(func=_check_policy)

    p = sub.add_parser("rules", help="write the policy's SLOs as Prometheus alerting rules (burn-rate pairs too)")
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("--out", help="rules file to write (default: standard output)")
    p.set_defaults(func=_rules)

    p = sub.add_parser("rbac", help="print the least-privilege Kubernetes RBAC the policy's rollback steps need "
                                    "(ServiceAccount, a Role and RoleBinding per namespace)")
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("--namespace", default="rollback-bot", help="the bot's namespace, for its ServiceAccount "
                                                                 "(default rollback-bot)")
    p.add_argument("--name", default="rollback-bot", help="the ServiceAccount, Roles and RoleBindings' name "
                                                           "(default rollback-bot)")
    p.add_argument("--values", action="store_true", help="print the Helm chart's values instead (rbac.roles)")
    p.set_defaults(func=_rbac)

    p = sub.add_parser("readiness", help="check each service's way back now (baseline, dry run, SLO data and "
                                         "kinds, approvers, recover target); exit 1 when one is not ready")
    p.add_argument("--policy", required=True, help="policy YAML file")
    p.add_argument("service", nargs="?", help="only this service (default: every service)")
    p.set_defaults(func=_readiness)

    p = sub.add_parser("migrate", help="bring DATABASE_URL's schema to the newest revision (Alembic); serve does it "
                                       "by itself too, this does it ahead of a deploy")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("demo", help="the sandbox: a Slack-like chat page on 127.0.0.1 where the real bot rolls back "
                                    "a degraded model; no Slack workspace needed")
    p.add_argument("--headless", action="store_true",
                   help="no browser: a scripted approver plays the story; print the transcript, exit 0 if it recovered")
    p.add_argument("--port", type=int, default=8080, help="the chat page's port on 127.0.0.1 (default 8080)")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
