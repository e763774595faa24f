"""The `rollback-bot` command: serve, check-policy, rules, migrate, demo.

Entry point declared in pyproject.toml. Exit codes: 0 ok, 1 runtime failure, 2 bad input (policy or
environment), with a message that names what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bot.infra.config import ConfigError, Settings
from bot.slo.evaluation import grouping_plan
from bot.slo.policy_file import PolicyError, load_policy, load_policy_in_child


def _check_policy(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    names = ", ".join(policy.services)
    print(f"{args.file}: ok — {len(policy.services)} service(s): {names}")
    slo_queries = sum(1 for svc in policy.services.values() for slo in svc.slos
                      if slo.query and slo.by is None and slo.burn_rate is None)
    if slo_queries:
        print(f"grouping: {grouping_plan(policy.services.values()).summary(slo_queries)}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from bot.slo import rules

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
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
