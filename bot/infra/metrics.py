"""The bot's own Prometheus metrics, served at GET /metrics. Label values are names, never secrets.

Incremented by bot.incidents (service, close, runner, detection, alerts), bot.slo.gate, bot.slack.slack_out and
handlers.alertmanager.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INCIDENTS = Counter("rollback_incidents_total", "Incidents by outcome", ["outcome"], registry=REGISTRY)
TIME_TO_RECOVER = Histogram("rollback_time_to_recover_seconds", "Approval to verified recovery",
                            buckets=(15, 30, 60, 120, 180, 300, 600, 1200), registry=REGISTRY)
RECOVER_TARGET = Counter("rollback_recover_target_total",
                         "Recovered incidents within / over their time-to-recover target (alert to stable)",
                         ["service", "result"], registry=REGISTRY)
EXECUTOR_SECONDS = Histogram("rollback_executor_seconds", "Executor step durations", ["executor", "result"],
                             registry=REGISTRY)
EXECUTOR_FAILURES = Counter("rollback_executor_failures_total", "Failed executor steps", ["executor"],
                            registry=REGISTRY)
SLACK_CALLS = Counter("rollback_slack_calls_total", "Slack Web API calls by method", ["method"],
                      registry=REGISTRY)
EVALUATION_SECONDS = Histogram("rollback_evaluation_seconds", "Duration of one SLO evaluation cycle",
                               registry=REGISTRY)
EVALUATION_STARTED = Gauge("rollback_evaluation_last_start_seconds", "When the last evaluation cycle started (unix time)",
                           registry=REGISTRY)
EVALUATION_LAST = Gauge("rollback_evaluation_last_seconds", "Duration of the last finished evaluation cycle",
                        registry=REGISTRY)
SLO_STATUS = Gauge("rollback_slo_breaching", "1 while an SLO breaches, 0 otherwise", ["service", "slo"],
                   registry=REGISTRY)
ALERTMANAGER_ALERTS = Counter("rollback_alertmanager_alerts_total",
                              "Alerts received on POST /alertmanager, by what the bot did with them", ["result"],
                              registry=REGISTRY)
PROMOTIONS = Counter("rollback_promotions_total", "Promotion gate decisions", ["service", "result"],
                     registry=REGISTRY)
GROUPING_MISMATCHES = Counter("rollback_grouping_mismatches_total",
                              "Grouped queries whose sampled member read differently alone (the group is then "
                              "evaluated query by query)", registry=REGISTRY)
GROUPS_DISABLED = Gauge("rollback_grouping_disabled_groups", "Grouped queries turned off after a mismatch",
                        registry=REGISTRY)
LEASES_HELD = Gauge("rollback_leases_held", "Leases this replica holds (its own membership and evaluation shards)",
                    registry=REGISTRY)
WORK_TAKEN_OVER = Counter("rollback_work_taken_over_total",
                          "Work rows (plan runs, verification ticks, timers, closes, Slack requests) this replica took "
                          "over from a replica whose lease had expired", ["kind"], registry=REGISTRY)
FENCING_REJECTIONS = Counter("rollback_fencing_rejections_total",
                             "Store writes refused because the lease they were made under was no longer held",
                             registry=REGISTRY)
DRILLS = Counter("rollback_drills_total", "Rollback drills (bot.incidents.drills) by mode (dry_run, staging) and result",
                 ["service", "mode", "result"], registry=REGISTRY)
