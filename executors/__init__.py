"""Rollback actions, one module each, behind the Protocol in executors.base; each module's SPEC
(executors.spec) says what the action can do, and executors.registry lists them. Never imports Slack or bot."""
