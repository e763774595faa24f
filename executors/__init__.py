"""Rollback actions, one module each, behind the Protocol in executors.base. Never imports Slack."""
