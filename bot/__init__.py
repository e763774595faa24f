"""rollback-bot: the domain and its wiring, in layers (top to bottom; pyproject.toml's import-linter contracts
keep them):

- bot.cli, bot.app — the command line and the wiring (`wire` hands each collaborator the few others it uses);
- bot.incidents — the incident state machine, approvals, plan runs, verification, the close, restart pick-up;
- bot.slack — the thread as a view of the stored timeline, Block Kit, every message's wording, SlackOut;
- bot.slo — the policy model, SLO evaluation, burn rate, alert rules, the promotion gate;
- bot.infra — the store, Prometheus and model-registry clients, scheduler, metrics, config, redaction.

handlers/ (inbound adapters) sit between the wiring and bot.incidents; executors/ are the leaf.
"""
